"""Encoders: one loaded model plus its own preprocessing, turning images and text into features.

`Encoder` holds everything shared (preprocessing, batching, progress, crops); `OpenClipEncoder`
and `TransformersEncoder` add the forward passes. Text goes in as finished sentences
(`encode_sentences`); filling prompt templates and ensembling them per class is
``core.methods.zeroshot.format_prompts`` / ``ensemble_text_features``, which the pipeline applies.
Build them with `core.models.load.load_encoder`, which also checks the weights.

Every ``encode_*`` method runs under ``torch.inference_mode()`` in the encoder's ``precision``
("fp32": exact; "int8": Linear layers dynamically quantised, CPU; "bf16" / "fp16": autocast, CUDA,
and "bf16" on a CPU over a twin with bf16 matmul weights, `core.models.bf16_cpu`; see
`core.models.load.load_encoder`), in batches, and returns float32 CPU tensors, L2-normalised
along the last dimension, that are ordinary tensors (usable later in autograd, e.g. by GPUA's
refinement). Images are prepared by `core.models.preprocess` on a few threads while the model runs
(pass a lazy, thread-safe sequence whose ``__getitem__`` decodes a file to overlap decoding too).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image
from torch import Tensor

from core.checks import as_float_tensor, l2_normalize
from core.models.dense_clip import maskclip_dense, supports_dense
from core.models.preprocess import (
    Progress,
    as_rgb,
    check_boxes,
    clip_boxes,
    crop_uint8,
    iter_batches,
    normalize,
    reporter,
    to_uint8,
)


class Encoder:
    """A loaded model and its preprocessing (see the module docstring).

    Attributes
    ----------
    spec : core.models.registry.ModelSpec
        The registry entry; it alone decides preprocessing and feature extraction.
    model : torch.nn.Module
        The network, in eval mode with ``requires_grad`` off. Shared read-only across sessions.
    device : torch.device
    n_forward : int
        Number of batched forward passes run so far (tests use it to prove a cache hit).
    precision : str
        "fp32", "int8", "bf16" or "fp16" (see the module docstring); part of the feature cache key.
    """

    def __init__(self, spec, model: torch.nn.Module, device: torch.device, *,
                 precision: str = "fp32"):
        self.spec = spec
        self.model = model
        self.device = device
        self.precision = precision
        self.n_forward = 0
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(key={self.spec.key!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r})")

    @property
    def grid_size(self) -> tuple[int, int] | None:
        """(h, w) of the patch grid, or None for a model without patches."""
        return self.spec.grid_size

    # ----------------------------------------------------------------------------- preprocessing
    def preprocess(self, image: Image.Image) -> Tensor:
        """The model's own eval transform: Tensor, shape (3, image_size, image_size), float32."""
        return self._normalize(to_uint8(image, self.spec).unsqueeze(0))[0]

    def _normalize(self, batch: Tensor) -> Tensor:
        return normalize(batch, self._mean.to(batch.device), self._std.to(batch.device))

    # ------------------------------------------------------------------------------ image paths
    def encode_images(
        self,
        images: Sequence[Image.Image],
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> Tensor:
        """Global image features.

        Parameters
        ----------
        images : sequence of PIL.Image, length N
            Any mode (converted to RGB). Items are read on worker threads: a lazy sequence
            (decoding files in ``__getitem__``) must allow concurrent reads.
        batch_size : int
        progress : callable ``progress(done, total, desc)``, optional
            Called after each batch; a tqdm bar is shown instead when None and stderr is a tty.

        Returns
        -------
        Tensor, shape (N, output_dim)
            L2-normalised. CLIP: the projected image embedding; DINO: the CLS token after the
            final layer norm.
        """
        return self._run_images(images, self._forward_global, batch_size, progress,
                                f"{self.spec.display_name}: images")

    def encode_pixels(
        self, pixels: Tensor, *, batch_size: int = 32, progress: Progress | None = None
    ) -> Tensor:
        """Global features of already preprocessed images.

        pixels : Tensor, shape (N, 3, image_size, image_size): float, normalised as
            `preprocess` does, or uint8 as ``core.models.preprocess.to_uint8`` makes (normalised
            here, on the model's device, as `encode_images` does: the same features bit for bit).
        Returns Tensor, shape (N, output_dim), L2-normalised.
        """
        if not (isinstance(pixels, Tensor) and pixels.dtype == torch.uint8):
            pixels = as_float_tensor(pixels, "pixels")
        side = self.spec.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, side, side) or len(pixels) == 0:
            raise ValueError(
                f"pixels: expected shape (N, 3, {side}, {side}) with N >= 1, got "
                f"{tuple(pixels.shape)}; build it with torch.stack([encoder.preprocess(im), ...])."
            )
        batches = (pixels[i:i + batch_size] for i in range(0, len(pixels), _batch(batch_size)))
        return self._run_batches(batches, len(pixels), self._forward_global, progress,
                                 f"{self.spec.display_name}: images")

    def encode_patches(
        self,
        images: Sequence[Image.Image],
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> Tensor:
        """Patch features, Tensor of shape (N, h, w, d), L2-normalised per patch.

        DINO: the last hidden state after the final layer norm, without its CLS and register
        tokens. ViT CLIPs: the MaskCLIP dense features (same as `encode_dense`).
        """
        self._require_patches()
        return self._run_images(images, self._forward_patches, batch_size, progress,
                                f"{self.spec.display_name}: patches")

    def encode_dense(
        self,
        images: Sequence[Image.Image],
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> Tensor:
        """MaskCLIP dense features of a ViT CLIP: Tensor (N, h, w, output_dim), unit norm per patch.

        See `core.models.dense_clip`. Raises ValueError for models without this path (ResNet,
        SigLIP,
        DINO).
        """
        self._require_dense()
        return self._run_images(images, self._forward_dense, batch_size, progress,
                                f"{self.spec.display_name}: dense")

    def encode_crops(
        self,
        images: Sequence[Image.Image],
        boxes: Tensor | Callable[[Image.Image], Tensor],
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> Tensor:
        """Global features of each image (view 0) and of M crops of it (views 1..M).

        Parameters
        ----------
        images : sequence of PIL.Image, length N
        boxes : Tensor, shape (N, M, 4), or callable ``boxes_for(image) -> Tensor (M, 4)``
            Crop boxes (left, top, right, bottom) in pixels of the (RGB-converted) image; clipped
            to the image. Each crop is resized to image_size x image_size (LaZSL crops are square).

        Returns
        -------
        Tensor, shape (N, 1 + M, output_dim)
            L2-normalised; view 0 equals `encode_images` of the same image.
        """
        n = _count(images, "images")
        if callable(boxes):
            n_crops = check_boxes(boxes(as_rgb(images[0])), "boxes_for(images[0])").shape[0]

            def boxes_of(i: int, image: Image.Image) -> Tensor:
                found = check_boxes(boxes(image), f"boxes_for(images[{i}])")
                if found.shape[0] != n_crops:
                    raise ValueError(
                        f"boxes_for(images[{i}]): expected {n_crops} boxes like images[0], got "
                        f"{found.shape[0]}; every image needs the same number of crops."
                    )
                return found
        else:
            boxes = _check_box_rows(boxes, n)
            n_crops = boxes.shape[1]

            def boxes_of(i: int, image: Image.Image) -> Tensor:
                return check_boxes(boxes[i], f"boxes[{i}]")

        def views_of(i: int) -> list[Tensor]:  # 1 + M uint8 views of image i
            image = as_rgb(images[i])
            crops = clip_boxes(boxes_of(i, image), image.size, i).tolist()
            return [to_uint8(image, self.spec)] + [crop_uint8(image, b, self.spec) for b in crops]

        step = _batch(batch_size)
        batches = iter_batches(n, views_of, step)
        feats = self._run_batches(batches, n * (1 + n_crops), self._forward_global, progress,
                                  f"{self.spec.display_name}: crops")
        return feats.reshape(n, 1 + n_crops, -1)

    def encode_crop_patches(
        self,
        images: Sequence[Image.Image],
        boxes: Tensor,
        *,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> Tensor:
        """Patch features of M boxes of each image, each box resized to the model's input square.

        For sliding-window segmentation: each box (a window) is resampled straight from the image
        to image_size x image_size (no aspect-preserving crop), so its patch grid tiles the box.

        Parameters
        ----------
        images : sequence of PIL.Image, length N
        boxes : Tensor, shape (N, M, 4)
            (left, top, right, bottom) in pixels of each image; clipped to it.

        Returns
        -------
        Tensor, shape (N, M, h, w, d)
            L2-normalised per patch; as `encode_patches` (MaskCLIP dense features for a ViT CLIP,
            the last hidden state's patch tokens for DINO).
        """
        self._require_patches()
        n = _count(images, "images")
        boxes = _check_box_rows(boxes, n)

        def views_of(i: int) -> list[Tensor]:
            image = as_rgb(images[i])
            crops = clip_boxes(check_boxes(boxes[i], f"boxes[{i}]"), image.size, i).tolist()
            return [crop_uint8(image, b, self.spec) for b in crops]

        batches = iter_batches(n, views_of, _batch(batch_size))
        feats = self._run_batches(batches, n * boxes.shape[1], self._forward_patches, progress,
                                  f"{self.spec.display_name}: windows")
        return feats.reshape(n, boxes.shape[1], *feats.shape[1:])

    # ------------------------------------------------------------------------------- text paths
    def encode_sentences(
        self, sentences: Sequence[str], *, batch_size: int = 256, progress: Progress | None = None
    ) -> Tensor:
        """Text embeddings of sentences (filled prompts): Tensor (S, output_dim), L2-normalised.

        Class prototypes from templates: ``core.methods.zeroshot.format_prompts`` to fill them,
        this to encode, ``ensemble_text_features`` to average per class (see
        ``core.pipeline.extraction``).
        """
        sentences = _check_strings(sentences, "sentences")
        tokenizer = self._text_tokenizer()
        step = _batch(batch_size)
        tokens = tokenizer(sentences)  # (S, context_length)
        lengths = self._text_lengths(tokens)
        if lengths is None:  # every batch costs the full context: order does not matter
            order = torch.arange(len(sentences))
        else:  # batches of similar lengths: each is trimmed to its own longest prompt
            order = torch.argsort(lengths, stable=True)
        batches = (tokens[order[i:i + step]] for i in range(0, len(sentences), step))
        out = self._run_batches(batches, len(sentences), self._forward_text, progress,
                                f"{self.spec.display_name}: text")
        return out[torch.argsort(order)]  # back to the sentences' order

    # ------------------------------------------------------------------------ batching machinery
    def _run_images(self, images: Sequence[Image.Image], forward, batch_size: int,
                    progress: Progress | None, desc: str) -> Tensor:
        n, step = _count(images, "images"), _batch(batch_size)
        batches = iter_batches(n, lambda i: [to_uint8(images[i], self.spec)], step)
        return self._run_batches(batches, n, forward, progress, desc)

    def _run_batches(self, batches: Iterable[Tensor], total: int, forward,
                     progress: Progress | None, desc: str) -> Tensor:
        report, bar = reporter(progress, total, desc)
        outputs, done = [], 0
        try:
            for batch in batches:
                batch = batch.to(self.device, non_blocking=True)
                if batch.dtype == torch.uint8:  # images: normalised here, on the model's device
                    batch = self._normalize(batch)
                with torch.inference_mode(), self._autocast():
                    # A batch of one runs as two: at one row BLAS takes a matrix-vector kernel
                    # whose sums round differently (2e-7), and features must not depend on how
                    # the images were batched (the Ray path batches them otherwise).
                    out = forward(batch.repeat(2, *[1] * (batch.ndim - 1)) if len(batch) == 1
                                  else batch)[: len(batch)].float().cpu()
                self.n_forward += 1
                outputs.append(out.clone())  # an ordinary tensor, not an inference tensor
                done += len(batch)
                if report is not None:
                    report(done, total, desc)
        finally:
            if bar is not None:
                bar.close()
        return l2_normalize(torch.cat(outputs))

    def _autocast(self):
        # Only the half precisions autocast; "fp32" and "int8" run the model as it is.
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ----------------------------------------------------------------------------- model hooks
    def _forward_global(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, d)
        raise NotImplementedError

    def _forward_patches(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, h, w, d)
        raise NotImplementedError

    def _forward_dense(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, h, w, d_joint)
        raise NotImplementedError

    def _text_lengths(self, tokens: Tensor) -> Tensor | None:
        """Tokens each prompt really needs, (S,) long, when the forward trims the padding of a
        batch (then similar lengths are batched together); None otherwise."""
        return None

    def _forward_text(self, tokens: Tensor) -> Tensor:  # (B, ctx) -> (B, d)
        raise NotImplementedError

    def _text_tokenizer(self):
        raise ValueError(
            f"{self.spec.display_name} ('{self.spec.key}') is a vision-only model (kind "
            f"'{self.spec.kind}') without a text tower; text features need a VLM, see "
            "core.models.list_models('vlm')."
        )

    def _require_patches(self) -> None:
        spec = self.spec
        if spec.patch_size is None or (spec.library == "open_clip" and not spec.dense):
            raise ValueError(
                f"{self.spec.display_name} ('{self.spec.key}') has no patch features (no patch "
                "grid, or no dense path for its pooling); pick a ViT CLIP or a DINO model."
            )

    def _require_dense(self) -> None:
        if not self.spec.dense:
            raise ValueError(
                f"{self.spec.display_name} ('{self.spec.key}') has no dense CLIP path: MaskCLIP "
                "needs a ViT CLIP with a class token (not a ResNet, SigLIP or DINO); use "
                "encode_patches for DINO patch features."
            )


class OpenClipEncoder(Encoder):
    """An open_clip CLIP-style model (image and text towers)."""

    def __init__(self, spec, model, device, tokenizer_factory: Callable[[], Callable], *,
                 precision: str = "fp32"):
        super().__init__(spec, model, device, precision=precision)
        self._tokenizer_factory = tokenizer_factory
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()
        if spec.dense and not supports_dense(model.visual):
            raise ValueError(
                f"registry entry '{spec.key}' says dense=True but its image tower "
                f"({type(model.visual).__name__}) has no MaskCLIP path; set dense=False."
            )

    def _forward_global(self, x: Tensor) -> Tensor:
        return self.model.encode_image(x)  # (B, d_joint)

    def _forward_dense(self, x: Tensor) -> Tensor:
        return maskclip_dense(self.model.visual, x)  # (B, h, w, d_joint)

    _forward_patches = _forward_dense

    def _text_lengths(self, tokens: Tensor) -> Tensor | None:
        if not _short_text_ok(self.model):
            return None
        return tokens.argmax(dim=-1) + 1  # up to the EOT, which has the largest id in the BPE

    def _forward_text(self, tokens: Tensor) -> Tensor:
        tokens = tokens.to(self.device)
        if not _short_text_ok(self.model):
            return self.model.encode_text(tokens)  # (B, d_joint)
        return _encode_text_trimmed(self.model, tokens)

    def _text_tokenizer(self):
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = self._tokenizer_factory()
        return self._tokenizer


class TransformersEncoder(Encoder):
    """A transformers vision backbone (DINOv2, DINOv2 with registers, DINOv3 ViT)."""

    def _hidden(self, x: Tensor):
        return self.model(pixel_values=x)

    def _forward_global(self, x: Tensor) -> Tensor:
        return self._hidden(x).pooler_output  # (B, d): CLS after the final layer norm

    def _forward_patches(self, x: Tensor) -> Tensor:
        tokens = self._hidden(x).last_hidden_state  # (B, n_prefix + h*w, d)
        h, w = self.grid_size
        patches = tokens[:, self.spec.n_prefix_tokens:]
        if patches.shape[1] != h * w:
            raise RuntimeError(
                f"'{self.spec.key}': expected {self.spec.n_prefix_tokens} prefix + {h * w} patch "
                f"tokens, got {tokens.shape[1]} in total; fix n_prefix_tokens / patch_size."
            )
        return patches.reshape(len(x), h, w, -1)  # (B, h, w, d)


# ---------------------------------------------------------------------------------- helpers
def _short_text_ok(model) -> bool:
    """True for an OpenAI-style CLIP text tower: causal mask, pooled at the EOT (argmax) token.

    There the padding after the last EOT of a batch cannot change any feature (the causal mask
    hides later positions), so `_encode_text_trimmed` may drop it.
    """
    mask = getattr(model, "attn_mask", None)
    return (getattr(model, "text_pool_type", None) == "argmax" and mask is not None
            and mask.ndim == 2 and bool(torch.isneginf(mask.triu(1)).equal(
                torch.ones_like(mask, dtype=torch.bool).triu(1))))


def _encode_text_trimmed(model, tokens: Tensor) -> Tensor:
    """open_clip ``CLIP.encode_text`` on the first L positions, L = last EOT of the batch + 1.

    Prompts are ~10-20 tokens of a 77-token context, so this is several times faster and equal
    up to float rounding (tests compare it with ``encode_text``). It also runs the int8 twin,
    whose quantised Linear layers have no ``.weight`` tensor for open_clip's dtype probe.
    tokens : (B, context_length) long. Returns (B, d_joint).
    """
    length = int(tokens.argmax(dim=-1).max()) + 1  # EOT has the largest id in CLIP's BPE
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # (B, L, width)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]  # (B, width), EOT
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _count(items: Sequence, name: str) -> int:
    try:
        n = len(items)
    except TypeError as exc:
        raise ValueError(
            f"{name}: expected a sequence (list), got {type(items).__name__}."
        ) from exc
    if n == 0:
        raise ValueError(f"{name}: expected at least one item, got an empty sequence.")
    return n


def _check_box_rows(boxes, n: int) -> Tensor:
    """Boxes of n images, M each: float Tensor (n, M, 4)."""
    boxes = as_float_tensor(boxes, "boxes")
    if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
        raise ValueError(
            f"boxes: expected shape ({n}, M, 4) (left, top, right, bottom per crop), got "
            f"{tuple(boxes.shape)}; pass one row of M boxes per image."
        )
    return boxes


def _batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}.")
    return int(batch_size)


def _check_strings(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{name}: expected a list of strings, got one string {values!r}; wrap it.")
    values = list(values)
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(
            f"{name}: expected a non-empty list of non-empty strings, got {values[:5]!r}."
        )
    return values
