"""The fitted GPUA map (:class:`Alignment`): apply it to features, save and load it.

Fitting is in ``core.methods.gpua.fit``; this module only needs the map and its diagnostics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from core.checks import check_matrix, check_positive, l2_normalize
from core.solvers.procrustes import orthogonality_error

__all__ = ["Alignment"]

FORMAT_VERSION = 1
_META_KEY = "gpua"


def _common_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_features(x, name: str) -> Tensor:
    """Validate a non-empty, finite float tensor of shape (..., d) with at least one dimension."""
    x = torch.as_tensor(x) if not isinstance(x, Tensor) else x
    return check_matrix(x, name, ndim=max(x.ndim, 1))


@dataclass(frozen=True, eq=False)
class Alignment:
    """A fitted GPUA map from VFM space (d_v) into the VLM text space (d_t).

    Attributes
    ----------
    W : Tensor, shape (d_v, d_t)
        The map; (semi-)orthogonal when ``reorthogonalize`` (see ``orthogonality_error``).
    pseudo_labels : Tensor, shape (n,), long
        ``argmax`` of the UCM correspondences of the fitting pool.
    probs : Tensor, shape (n, K), or None
        UCM correspondences ``n * plan``: rows sum to 1, columns to about n/K. None after
        ``load`` of a file saved with ``include_probs=False``.
    loss_history : tuple of float, length ths_steps + 1
        THS loss at W0, then after each step.
    orthogonality_error : float
        ``||W^T W - I||_F`` (``||W W^T - I||_F`` when d_v < d_t) of the final W.
    config : dict
        The knobs of :func:`fit_gpua`.
    ucm_n_iter : tuple of int
        Sinkhorn iterations of each UCM round.
    ucm_marginal_error : float
        L1 column-marginal error of the last UCM plan.
    W0 : Tensor, shape (d_v, d_t), or None
        The Procrustes map before THS (Eq. 14), kept so that what THS changed can be shown
        (:meth:`procrustes_only`). None in files saved before it was recorded.
    """

    W: Tensor
    pseudo_labels: Tensor
    probs: Tensor | None
    loss_history: tuple[float, ...]
    orthogonality_error: float
    config: dict = field(default_factory=dict)
    ucm_n_iter: tuple[int, ...] = ()
    ucm_marginal_error: float = 0.0
    W0: Tensor | None = field(default=None, repr=False)

    def procrustes_only(self) -> Alignment:
        """This alignment with the Procrustes map ``W0`` in place of the THS-refined ``W``.

        Raises ValueError when ``W0`` was not recorded (a file from an older version).
        """
        if self.W0 is None:
            raise ValueError("this alignment has no W0 (saved by an older version); re-fit it.")
        return replace(self, W=self.W0, loss_history=self.loss_history[:1],
                       orthogonality_error=orthogonality_error(self.W0))

    @property
    def plan(self) -> Tensor | None:
        """UCM transport plan, shape (n, K), total mass 1 (``probs / n``)."""
        return None if self.probs is None else self.probs / self.probs.shape[0]

    def transform(self, vfm_features) -> Tensor:
        """Map VFM features into the text space: ``normalise(Z W)``.

        Parameters
        ----------
        vfm_features : Tensor, shape (..., d_v)
            CLS features (m, d_v) or patch features (n, h, w, d_v); leading dims are kept.

        Returns
        -------
        Tensor, shape (..., d_t), L2-normalised
        """
        z = _check_features(vfm_features, "vfm_features")
        if z.shape[-1] != self.W.shape[0]:
            raise ValueError(
                f"vfm_features: expected last dimension d_v = {self.W.shape[0]} (the VFM this "
                f"alignment was fitted on), got shape {tuple(z.shape)}; use the same VFM (and the "
                "same concatenation) as at fit time."
            )
        dtype = _common_dtype(z, self.W)
        w = self.W.to(device=z.device, dtype=dtype)
        return l2_normalize(z.to(dtype) @ w)  # (..., d_t)

    def predict_proba(self, vfm_features, text_features, *, temperature: float = 100.0) -> Tensor:
        """Class probabilities ``softmax(tau normalise(Z W) Y^T)``, shape (..., K)."""
        temperature = check_positive(temperature, "temperature")
        f = self.transform(vfm_features)
        y = check_matrix(text_features, "text_features")
        if y.shape[1] != self.W.shape[1]:
            raise ValueError(
                f"text_features: expected dimension d_t = {self.W.shape[1]}, got shape "
                f"{tuple(y.shape)}; encode the prompts with the VLM used at fit time."
            )
        y = l2_normalize(y.to(device=f.device, dtype=f.dtype))
        return torch.softmax(temperature * (f @ y.T), dim=-1)  # (..., K)

    def predict(self, vfm_features, text_features) -> Tensor:
        """Predicted class indices, shape (...,), long (argmax of the cosine scores)."""
        return self.predict_proba(vfm_features, text_features).argmax(dim=-1)

    def save(self, path, *, include_probs: bool = True) -> None:
        """Write a safetensors file: W, pseudo-labels, loss history (and probs); JSON metadata.

        The metadata (safetensors header, key ``"gpua"``) holds config, d_v, d_t, diagnostics and
        versions. ``include_probs=False`` skips the (n, K) correspondences, which can be large
        for patch pools.
        """
        import safetensors
        from safetensors.torch import save_file

        tensors = {
            "W": self.W.detach().cpu().contiguous(),
            "pseudo_labels": self.pseudo_labels.detach().cpu().contiguous(),
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
        }
        if include_probs and self.probs is not None:
            tensors["probs"] = self.probs.detach().cpu().contiguous()
        if self.W0 is not None:
            tensors["W0"] = self.W0.detach().cpu().contiguous()
        meta = {
            "format_version": FORMAT_VERSION,
            "d_v": int(self.W.shape[0]),
            "d_t": int(self.W.shape[1]),
            "orthogonality_error": self.orthogonality_error,
            "ucm_n_iter": list(self.ucm_n_iter),
            "ucm_marginal_error": self.ucm_marginal_error,
            "config": self.config,
            "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__},
        }
        save_file(tensors, os.fspath(path), metadata={_META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path) -> Alignment:
        """Read a file written by :meth:`save`; raises a clear error if missing or corrupt."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"GPUA alignment file not found: {path!r}; save one with Alignment.save(path) "
                "or check the path."
            )
        try:
            with safe_open(path, framework="pt") as f:
                meta = json.loads((f.metadata() or {})[_META_KEY])
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            w, labels = tensors["W"], tensors["pseudo_labels"]
            history = tuple(float(v) for v in tensors["loss_history"].tolist())
        except Exception as exc:
            raise ValueError(
                f"{path!r} is not a readable GPUA alignment file ({type(exc).__name__}: {exc}); "
                "it may be truncated or written by another tool. Re-fit and save it again."
            ) from exc
        if tuple(w.shape) != (meta["d_v"], meta["d_t"]):
            raise ValueError(f"{path!r}: W has shape {tuple(w.shape)}, metadata says otherwise.")
        return cls(
            W=w,
            pseudo_labels=labels,
            probs=tensors.get("probs"),
            loss_history=history,
            orthogonality_error=float(meta["orthogonality_error"]),
            config=meta["config"],
            ucm_n_iter=tuple(meta["ucm_n_iter"]),
            ucm_marginal_error=float(meta["ucm_marginal_error"]),
            W0=tensors.get("W0"),
        )
