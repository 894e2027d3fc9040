"""The methods: CLIP zero-shot, OTFusion, GPUA (``gpua/``) and LaZSL, and :mod:`run`, which solves
every method on one cached :class:`FeatureSet` (what a slider re-runs). Their settings live in
``core.config`` (``MethodSettings``, one frozen dataclass per method)."""

from core.methods.lazsl import explain, lazsl_scores
from core.methods.otfusion import WEIGHTS as OTFUSION_WEIGHTS
from core.methods.run import (
    METHOD_TITLES,
    METHODS,
    FeatureSet,
    MethodResult,
    gpua_inputs,
    otfusion_weights,
    run_method,
    run_methods,
    sensitivity_sweep,
)

__all__ = [
    "METHOD_TITLES", "METHODS", "FeatureSet", "MethodResult", "run_method",
    "run_methods", "sensitivity_sweep", "gpua_inputs", "explain", "lazsl_scores",
    "OTFUSION_WEIGHTS", "otfusion_weights",
]
