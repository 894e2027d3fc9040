"""OTFusion fitted on one image set and applied to another (the official code's inductive mode).

``fit_otfusion`` runs ``otfusion`` on a pool (e.g. 16 unlabeled images per class), keeps its GMMs
and its final source weights, and returns a frozen :class:`OTFusionModel`. Its
``predict_proba(vfm_features, vlm_probs)`` scores new images by the weighted fusion of the GMM
posteriors and the VLM probabilities, without OT (``evalute_test`` in the authors' code):

    probs = (sum_s eta_s P_s + sum_j lam_j Y_j) / (sum_s eta_s + sum_j lam_j)

where the authors leave the sum unnormalised (rows sum to 2); dividing keeps the argmax and makes
rows sum to 1. Works for both recipes, like GPUA's fit-on-a-pool (``core.methods.gpua``).

    >>> model = fit_otfusion([X_pool, V_pool], [Y_pool], recipe="official")   # doctest: +SKIP
    >>> model.predict_proba([X_test, V_test], [Y_test])                       # (M, K)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.checks import l2_normalize
from core.methods.otfusion import otfusion
from core.methods.otfusion_common import OTFusionResult, _e_step_into, _prepare
from core.solvers.gmm import centre_columns

__all__ = ["OTFusionModel", "fit_otfusion"]


@dataclass(frozen=True)
class OTFusionModel:
    """A fitted OTFusion: GMMs and source weights from a pool, to score other images.

    Attributes
    ----------
    means : tuple of Tensor, shapes (K, d_s)
        One per visual source (one for ``concat``, none for ``semantic_only``).
    var : tuple of Tensor, shapes (d_s,)
        Shared diagonal variances.
    eta, lam : tuple of float
        Final weights of the visual sources and of the VLMs.
    temperature : float
        Posteriors are softmax(log-likelihood / temperature).
    variant, recipe : str
    fit : OTFusionResult
        The solve on the pool (its ``history`` holds the weights of every iteration).
    """

    means: tuple[Tensor, ...]
    var: tuple[Tensor, ...]
    eta: tuple[float, ...]
    lam: tuple[float, ...]
    temperature: float
    variant: str
    recipe: str
    fit: OTFusionResult

    def predict_proba(self, vfm_features, vlm_probs) -> Tensor:
        """Weighted fusion of posteriors and VLM probabilities, shape (M, K), rows sum to 1.

        Parameters
        ----------
        vfm_features : list of Tensor, shapes (M, d_s)
            The new images' features from the same sources, in the same order, as the fit.
        vlm_probs : list of Tensor, shapes (M, K)
            Their zero-shot probabilities from the same VLMs as the fit.
        """
        vs, ys = self._inputs(vfm_features, vlm_probs)
        fused = torch.zeros_like(ys[0])
        for eta_s, p in zip(self.eta, self._posteriors(vs)):
            fused.add_(p, alpha=eta_s)
        for lam_j, y in zip(self.lam, ys):
            fused.add_(y, alpha=lam_j)
        total = sum(self.eta) + sum(self.lam)
        return fused.div_(total) if total > 0 else fused.fill_(1.0 / fused.shape[1])

    def predict(self, vfm_features, vlm_probs) -> Tensor:
        """argmax of :meth:`predict_proba`, shape (M,)."""
        return self.predict_proba(vfm_features, vlm_probs).argmax(1)

    # ------------------------------------------------------------------------------------ private
    def _inputs(self, vfm_features, vlm_probs):
        vs, ys, _, _, _ = _prepare(vfm_features, vlm_probs, self.variant, None, None, None,
                                   transductive=False)
        k = self.fit.probs.shape[1]
        if ys[0].shape[1] != k or len(ys) != len(self.lam):
            raise ValueError(
                f"vlm_probs: expected {len(self.lam)} matrices of {k} classes like the fit, got "
                f"{len(ys)} of {ys[0].shape[1]}; score the same VLMs against the same classes."
            )
        if self.variant == "concat":
            vs = [l2_normalize(torch.cat(vs, dim=1))]
        elif self.variant == "semantic_only":
            vs = []
        dims = [v.shape[1] for v in vs]
        want = [m.shape[1] for m in self.means]
        if dims != want:
            raise ValueError(
                f"vfm_features: expected sources of dimensions {want} like the fit, got {dims}; "
                "pass the same models' features in the same order."
            )
        dtype = self.fit.probs.dtype
        return [v.to(dtype) for v in vs], [y.to(dtype) for y in ys]

    def _posteriors(self, vs: list[Tensor]):
        for v, mu, var in zip(vs, self.means, self.var):
            xc, mean = centre_columns(v)  # a shift of x and mu together leaves posteriors as is
            out = torch.empty(v.shape[0], mu.shape[0], dtype=v.dtype, device=v.device)
            row_sums = _e_step_into(xc, mu.to(v.device) - mean, var.to(v.device)
                                    * self.temperature, out)
            yield out.div_(row_sums)  # (M, K), rows sum to 1


def fit_otfusion(vfm_features, vlm_probs, *, recipe: str = "official",
                 weights: str | None = None, lam: float | Sequence[float] | None = None,
                 eta: Sequence[float] | None = None, eps: float = 0.01, n_iter: int = 10,
                 sinkhorn_iter: int | None = None, sinkhorn_tol: float | None = None,
                 temperature: float | None = None, variant: str = "joint", labels=None,
                 tol: float | None = None, reg_covar: float | None = None) -> OTFusionModel:
    """Fit OTFusion on a pool of images and return a model that scores other images.

    Parameters are those of :func:`core.methods.otfusion.otfusion` (default recipe "official",
    the one whose code has this mode); ``variant="no_joint"`` has no inductive form (its GMMs
    carry mixing weights that the fusion does not use).

    Returns
    -------
    OTFusionModel
    """
    if variant == "no_joint":
        raise ValueError(
            "variant: 'no_joint' has no inductive form; use 'joint', 'concat' or 'semantic_only'."
        )
    res = otfusion(vfm_features, vlm_probs, recipe=recipe, weights=weights, lam=lam, eta=eta,
                   eps=eps, n_iter=n_iter, sinkhorn_iter=sinkhorn_iter, sinkhorn_tol=sinkhorn_tol,
                   temperature=temperature, variant=variant, labels=labels, tol=tol,
                   reg_covar=reg_covar)
    return OTFusionModel(means=res.means, var=res.var, eta=res.eta, lam=res.lam,
                         temperature=res.temperature, variant=variant, recipe=recipe, fit=res)
