"""Inputs of the scale-out estimate (benchmarks/README.md, "Scale-out"): forward FLOPs per image
of each model, counted on a real forward, and decode + preprocess seconds per image on this CPU.

    python benchmarks/scale_estimate.py                  # all models below, 20 JPEGs decoded
    python benchmarks/scale_estimate.py --models clip-b16,dinov2-b

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward of one 224 x 224
image through the real architecture with random weights (no download: open_clip builds CLIP from
its bundled configs, transformers builds DINOv2 / DINOv3 from a config written here with the
released models' sizes). The counter counts a multiply-add as 2 FLOPs and covers matmuls and
convolutions (the rest, norms and softmax, is < 2% of a ViT). Decode: 500 x 375 photo-like JPEGs
(ImageNet's typical size) through ``core.data.decode_image`` + ``core.models.to_uint8``, as the
store's CPU stage runs them.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (open_clip architecture, None) or (None, transformers config kwargs)
_DINO = {"model_type": "dinov2", "patch_size": 14, "image_size": 224}
_DINO3 = {"model_type": "dinov3_vit", "patch_size": 16, "image_size": 224,
          "num_register_tokens": 4}
MODELS = {
    "clip-b16": ("ViT-B-16", None),
    "clip-l14": ("ViT-L-14", None),
    "dinov2-b": (None, {**_DINO, "hidden_size": 768, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "intermediate_size": 3072}),
    "dinov2-l": (None, {**_DINO, "hidden_size": 1024, "num_hidden_layers": 24,
                        "num_attention_heads": 16, "intermediate_size": 4096}),
    "dinov3-l": (None, {**_DINO3, "hidden_size": 1024, "num_hidden_layers": 24,
                        "num_attention_heads": 16, "intermediate_size": 4096}),
}


def forward_flops(name: str) -> float:
    """FLOPs of one image's forward (image tower only), counted."""
    arch, config = MODELS[name]
    x = torch.randn(1, 3, 224, 224)
    if arch is not None:
        import open_clip

        model = open_clip.create_model(arch).visual.eval()
    else:
        from transformers import AutoConfig, AutoModel

        model = AutoModel.from_config(AutoConfig.for_model(**config)).eval()
    counter = FlopCounterMode(display=False)
    # Grad enabled: without it nn.MultiheadAttention takes its fused fast path, which the
    # counter does not see (CLIP's attention would go uncounted).
    with torch.enable_grad(), counter:
        model(x) if arch is not None else model(pixel_values=x)
    return float(counter.get_total_flops())


def decode_seconds(n: int) -> float:
    """Seconds per image to decode a 500 x 375 JPEG and preprocess it for a 224 model (1 core)."""
    from core.data import ImageItem, decode_image
    from core.models import get_spec, to_uint8

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):  # smooth gradients + noise: compresses like a photo (~60 KB)
        yy, xx = np.mgrid[0:375, 0:500]
        base = np.stack([xx * 0.4 + i, yy * 0.5, (xx + yy) * 0.2], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        items.append(ImageItem.from_bytes(f"{i}.jpg", buf.getvalue()))
    spec = get_spec("clip-vit-b16")
    torch.set_num_threads(1)
    start = time.perf_counter()
    for item in items:
        to_uint8(decode_image(item, max_side=1024), spec)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--decode", type=int, default=20, help="JPEGs to decode")
    args = parser.parse_args()
    for name in args.models.split(","):
        print(f"{name:10s} {forward_flops(name) / 1e9:7.1f} GFLOP per image (forward)")
    per_image = decode_seconds(args.decode)
    load = os.getloadavg()
    print(f"decode + preprocess: {1000 * per_image:.1f} ms per 500x375 JPEG on one core "
          f"(load {load[0]:.1f})")


if __name__ == "__main__":
    main()
