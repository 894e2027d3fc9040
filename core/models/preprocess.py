"""Images to normalised batches: the eval transforms, parallel decoding and a prefetch thread.

`to_uint8` reproduces torchvision / open_clip eval transforms bit for bit (Pillow resize of the
short side, center crop; or a plain "squash" resize) but keeps the result as uint8 until a whole
batch is stacked; `normalize` then does ``ToTensor`` + ``Normalize`` on the batch at once.

`iter_batches` runs the per-image work (reading a lazy sequence item, which may decode a file,
converting to RGB, resizing, cropping) on a small thread pool (Pillow releases the GIL while it
decodes and resamples), stacks uint8 batches in input order, and keeps up to two batches ready in
a background thread while the model computes the current one. That overlap is what lets end-to-end
extraction run at the speed of the forward pass (``benchmarks/encode.py``).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from core.checks import as_float_tensor

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
PREFETCH_DEPTH = 2  # normalised batches kept ready ahead of the forward pass
N_WORKERS = max(1, min(4, os.cpu_count() or 1))  # threads decoding / resizing images

Progress = Callable[[int, int, str], None]


def as_rgb(image) -> Image.Image:
    """``image`` in RGB mode; TypeError for anything but a PIL image."""
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"expected a PIL.Image.Image, got {type(image).__name__}; open files with "
            "core.data.images (or PIL.Image.open) first."
        )
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class CropGeometry:
    """Where a model's input square comes from in an image: the spec's resize, then its crop.

    Attributes
    ----------
    resized : (w, h)
        Image size after the resize, pixels.
    crop : (left, top, right, bottom), int
        The center crop in pixels of the resized image (right, bottom exclusive).
    box : (left, top, right, bottom), float
        The same square in pixel coordinates of the original image, continuous (pixel ``x``
        covers ``[x, x + 1)``): patch ``(r, c)`` of an ``(h, w)`` grid covers
        ``left + [c, c + 1) * (right - left) / w`` and the like vertically. Everything outside
        it is never seen by the model.
    """

    resized: tuple[int, int]
    crop: tuple[int, int, int, int]
    box: tuple[float, float, float, float]


def crop_geometry(size: Sequence[int], spec) -> CropGeometry:
    """The spec's resize + center crop of an image of ``size`` = (w, h), as `to_uint8` applies it.

    "shortest": torchvision ``Resize(resize_size)`` (short side to ``resize_size``, long side
    truncated as torchvision does) then ``CenterCrop(image_size)`` (offsets rounded half to
    even, as torchvision's ``int(round(...))``); "squash": ``Resize((image_size, image_size))``,
    no crop. Pillow maps output pixel centres to input coordinates by the size ratio, so a box in
    resized pixels maps to the original image by that ratio alone.
    """
    w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ValueError(f"size: expected (w, h) >= (1, 1), got {tuple(size)!r}.")
    side = spec.image_size
    if spec.resize_mode == "squash":
        new_w = new_h = side
        left = top = 0
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        left, top = int(round((new_w - side) / 2.0)), int(round((new_h - side) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
    return CropGeometry(resized=(new_w, new_h), crop=(left, top, left + side, top + side), box=box)


def crop_box(size: Sequence[int], spec) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the region a model sees, in pixels of an image of ``size``.

    ``size`` = (w, h); ``spec`` a registry entry. See `CropGeometry.box`.
    """
    return crop_geometry(size, spec).box


def to_uint8(image: Image.Image, spec) -> Tensor:
    """The spec's resize + crop as a uint8 Tensor, shape (3, image_size, image_size).

    "shortest": torchvision ``Resize(resize_size)`` then ``CenterCrop(image_size)``, with the
    same rounding; "squash": ``Resize((image_size, image_size))``. RGB conversion comes first
    (open_clip converts last, which resamples palette images with nearest neighbour). The
    arithmetic is `crop_geometry`'s, which also tells segmentation where the patches lie.
    """
    image = as_rgb(image)
    geometry = crop_geometry(image.size, spec)
    image = image.resize(geometry.resized, RESAMPLE[spec.interpolation])
    if geometry.resized != (spec.image_size, spec.image_size):
        image = image.crop(geometry.crop)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S)


def crop_uint8(image: Image.Image, box: Sequence[float], spec) -> Tensor:
    """Region ``box`` = (left, top, right, bottom) of an RGB image resized to (3, S, S) uint8."""
    side = spec.image_size
    crop = image.resize((side, side), RESAMPLE[spec.interpolation], box=tuple(box))
    return torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1)


def normalize(batch: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (B, 3, S, S) -> float32 ``(x / 255 - mean) / std``, as ToTensor + Normalize."""
    x = batch.to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std)


def check_boxes(boxes, name: str) -> Tensor:
    """Validate boxes of one image: float Tensor, shape (M, 4)."""
    boxes = as_float_tensor(boxes, name)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{name}: expected shape (M, 4) of (left, top, right, bottom), got "
            f"{tuple(boxes.shape)}."
        )
    return boxes


def clip_boxes(boxes: Tensor, size: tuple[int, int], index: int) -> Tensor:
    """Clip (M, 4) boxes to an image of ``size`` = (w, h); ValueError for an empty box."""
    w, h = size
    hi = torch.tensor([w, h, w, h], dtype=torch.float32)
    clipped = torch.minimum(boxes.float().clamp_min(0.0), hi)  # (M, 4)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if bool(empty.any()):
        j = int(empty.nonzero()[0, 0])
        raise ValueError(
            f"boxes for image {index} ({w}x{h}): box {j} = {boxes[j].tolist()} is empty inside the "
            "image; boxes are (left, top, right, bottom) pixels with right > left, bottom > top."
        )
    return clipped


def iter_batches(
    n_items: int,
    views_of: Callable[[int], list[Tensor]],
    batch_size: int,
    *,
    n_workers: int = N_WORKERS,
) -> Iterator[Tensor]:
    """uint8 batches (B, 3, S, S) of the views of items ``0 .. n_items - 1``, in order, ahead.

    ``views_of(i)`` returns the uint8 views (3, S, S) of item i (one image, or one image and its
    crops); it runs on ``n_workers`` threads, so a lazy image sequence must allow concurrent
    reads. Batches are stacked with numpy: no torch op runs off the main thread, since a
    parallel torch op there starts a second OpenMP team that competes with the forward pass.
    Normalise them (`normalize`) where the model runs.
    """

    def views() -> Iterator[Tensor]:
        window = 2 * n_workers  # items in flight: keeps every worker busy, bounds memory
        with ThreadPoolExecutor(n_workers, thread_name_prefix="encoder-views") as pool:
            pending: deque = deque()
            submitted = 0
            while submitted < n_items or pending:
                while submitted < n_items and len(pending) < window:
                    pending.append(pool.submit(views_of, submitted))
                    submitted += 1
                yield from pending.popleft().result()

    def batches() -> Iterator[Tensor]:
        buffer: list[np.ndarray] = []
        for view in views():
            buffer.append(view.numpy())
            if len(buffer) == batch_size:
                yield torch.from_numpy(np.stack(buffer))
                buffer = []
        if buffer:
            yield torch.from_numpy(np.stack(buffer))

    return prefetch(batches())


def reporter(progress: Progress | None, total: int, desc: str):
    """(report, bar): ``progress`` itself, or a tqdm bar when None and stderr is a terminal."""
    if progress is not None:
        return progress, None
    if sys.stderr is not None and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False)
        return (lambda done, _total, _desc: bar.update(done - bar.n)), bar
    return None, None


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable, depth: int = PREFETCH_DEPTH) -> Iterator:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    An exception in the producer is raised in the consumer; a consumer that stops early stops
    the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # runs the generator's cleanup (thread pool shutdown) in this thread

    worker = threading.Thread(target=work, name="encoder-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
