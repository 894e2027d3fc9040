"""VLM x VFM Fusion Lab: training-free fusion of CLIP-like and DINO-like features by optimal
transport.

The public API::

    from core import sinkhorn, otfusion, fit_otfusion, fit_gpua, lazsl_scores, zeroshot_probs
    from core import make_synthetic

Where things live (imports point down this list, never up)::

    cli, config          the command line; every default, once
    pipeline/            images + models -> cached features, segmentation, exports
    eval/                benchmark harness and reports
    models/, data/       model registry and loading; image sets, classes, datasets
    methods/             zero-shot, OTFusion, GPUA, LaZSL on tensors; ``run`` solves them all
    solvers/             Sinkhorn, shared-diagonal GMM, Procrustes
    synthetic/           features with known labels; checks, metrics: shared helpers
"""

import sys

from core.methods import gpua as _gpua_package
from core.methods import lazsl as _lazsl_module
from core.methods import otfusion as _otfusion_module
from core.methods import zeroshot as _zeroshot_module
from core.methods.gpua import Alignment, fit_gpua
from core.methods.lazsl import LazslResult, lazsl_scores
from core.methods.otfusion import OTFusionResult, otfusion
from core.methods.otfusion_inductive import OTFusionModel, fit_otfusion
from core.methods.zeroshot import zeroshot_probs
from core.solvers.sinkhorn import sinkhorn
from core.solvers.sinkhorn_result import SinkhornResult
from core.synthetic import SyntheticData, make_synthetic

# The documented short module paths (`from core.otfusion import otfusion`, DESIGN's public API)
# keep working as aliases of the modules' real homes; `core.otfusion` itself is the function.
for _short, _module in {"zeroshot": _zeroshot_module, "otfusion": _otfusion_module,
                        "gpua": _gpua_package, "lazsl": _lazsl_module}.items():
    sys.modules.setdefault(f"{__name__}.{_short}", _module)

__all__ = [
    "sinkhorn", "SinkhornResult", "otfusion", "OTFusionResult", "fit_otfusion", "OTFusionModel",
    "fit_gpua", "Alignment",
    "lazsl_scores", "LazslResult", "zeroshot_probs", "make_synthetic", "SyntheticData",
]
