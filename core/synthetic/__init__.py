"""Synthetic CLIP-like / DINO-like features with known labels (global and patch level)."""

from core.synthetic.features import PRESETS, SyntheticData, make_synthetic
from core.synthetic.patches import PatchSyntheticData, make_patch_synthetic

__all__ = ["PRESETS", "SyntheticData", "make_synthetic", "PatchSyntheticData",
           "make_patch_synthetic"]
