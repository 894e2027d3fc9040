"""Further synthetic views of the same images: a second DINO-like model.

OTFusion fuses any number of visual sources and, with adaptive weights, gives each a share by how
often it agrees with the fused answer. :func:`second_vfm` makes a second VFM for the Playground and
tests: the first VFM's class directions under a random rotation (the same class geometry, as two
self-supervised models trained on the same images roughly share it) plus its own within-class
noise, so a noisier second view earns less weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.checks import check_range, l2_normalize
from core.synthetic.features import SyntheticData, _noise


def second_vfm(data: SyntheticData, *, noise: float, seed: int = 1) -> Tensor:
    """Features of ``data``'s images from a second DINO-like model.

    Parameters
    ----------
    data : SyntheticData
        Its ``vfm_class_means`` (k, d_vfm) and ``labels`` (n,) are reused.
    noise : float >= 0
        Within-class noise of the new view, on the scale of ``make_synthetic``'s ``vfm_noise``.
    seed : int
        Seeds the rotation and the noise (independent of ``data.seed``'s draws).

    Returns
    -------
    Tensor, shape (n, d_vfm), float32, rows L2-normalised.
    """
    noise = check_range(noise, "noise", 0.0, float("inf"))
    gen = torch.Generator().manual_seed(int(seed))
    d = data.vfm_class_means.shape[1]
    rotation = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    means = data.vfm_class_means.to(torch.float64) @ rotation  # (k, d), same class geometry
    x = means[data.labels] + _noise((data.n_samples, d), noise, gen)  # (n, d)
    return l2_normalize(x).to(torch.float32)
