"""GPUA (Yu et al., ICML 2026): correspondence mining (``ucm``), Procrustes + hubness-aware
refinement (``ths``), the fitted :class:`Alignment` (``fit``) and patch segmentation
(``segment``)."""

from core.methods.gpua.fit import Alignment, fit_gpua

__all__ = ["Alignment", "fit_gpua"]
