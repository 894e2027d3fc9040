"""Memory accounting for the session store: what a session holds, and giving freed heap back.

``estimate_bytes`` walks a session (dataclasses, dicts, sequences, object attributes) and adds up
the big things in it: tensors (each storage once, so views are free), numpy arrays, bytes and PIL
images; Python object overhead is not counted. ``release_memory`` asks glibc to return freed heap
to the operating system after sessions were dropped (a no-op where glibc is absent).
"""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import torch
from PIL import Image

_MAX_DEPTH = 8  # how deep estimate_bytes looks into nested objects


def estimate_bytes(obj, _seen: set | None = None, _depth: int = 0) -> int:
    """Memory held by ``obj``: tensors (each storage once), arrays, bytes and PIL images found in
    it, through dataclasses, dicts, sequences and object attributes. An estimate: Python object
    overhead is not counted."""
    seen = set() if _seen is None else _seen
    if _depth > _MAX_DEPTH or obj is None or isinstance(obj, (int, float, bool, str)):
        return 0
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = ("t", storage.data_ptr())
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj)
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, Image.Image):
        return obj.width * obj.height * len(obj.getbands())
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif dataclasses.is_dataclass(obj):
        children = [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return 0
    return sum(estimate_bytes(c, seen, _depth + 1) for c in children)


def release_memory() -> None:
    """Hand freed heap back to the operating system (glibc only; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
