"""Every default of the project, once: solver settings per method and recipe, default models,
prompt template, CLIP temperature, LaZSL crop counts, sweep grids, batch sizes.

The app, the CLI, the evaluation harness and the pipeline read their defaults from here, so an
entry point never restates a number (``tests/test_config.py`` checks it). This module imports only
the standard library: it is the bottom of the import graph and anything may import it.

Settings travel as one frozen dataclass per method (nanoGPT's config idea), bundled by
:class:`MethodSettings`, which is what ``core.methods.run.run_methods`` takes::

    from core.config import MethodSettings, OTFusionSettings
    settings = MethodSettings(otfusion=OTFusionSettings(lam=0.5))
    settings = settings.replace(gpua={"ths_steps": 50})   # a copy with one knob changed

A recipe is a named set of defaults for one method (``OTFUSION_RECIPES``, ``GPUA_RECIPES``,
``LAZSL_RECIPES``): ``"paper"`` is our reading of the paper (the class defaults), ``"official"``
what the authors' released code does. Each settings class names its recipe in a ``recipe`` field,
which ``core.methods.run`` passes to the solver (the algorithm changes, not only its numbers).

A field's ``metadata["ui"]`` is ``(minimum, maximum, step)`` of the app's slider for it: the range
a user explores, not a validity bound (the solvers validate their inputs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

__all__ = [
    "APP_CPU_PRECISION", "AUTO_CPU_PRECISIONS", "PRECISION", "PRECISIONS",
    "FAST_PATH_MIN_COSINE", "ONNX_EXPORT_SECONDS",
    "BATCH_SIZE", "DECODE_BATCH", "ENGINES", "RAY_ACTOR_CPUS", "RAY_DECODE_CPUS",
    "RAY_REQUIREMENTS", "RAY_WORKERS", "STORE_DIR_ENV", "DEFAULT_TEMPLATE", "DEFAULT_VFM",
    "DEFAULT_VLM", "EVAL_CHUNK_SIZE",
    "GPUA_LOSSES", "GPUA_MININGS", "GPUA_RECIPES", "GPUASettings", "GPUA_TARGETS",
    "GPUA_TRIPLET_MARGIN", "LAZSL_CROPS", "LAZSL_CROPS_PAPER",
    "LAZSL_CROPS_UI", "LAZSL_CROP_SCALE", "LAZSL_RECIPES", "LaZSLSettings", "MethodSettings",
    "OTFUSION_OFFICIAL_VFMS", "OTFUSION_OFFICIAL_VLMS", "OTFUSION_RECIPES", "OTFUSION_SETTINGS",
    "OTFUSION_VARIANTS", "OTFusionSettings", "RECIPE_NAMES", "SEED", "SEG_CROP",
    "SEG_DEFAULT_VFM", "SEG_FIT_IMAGES", "SEG_LONG_MAX", "SEG_METHODS", "SEG_MODES",
    "SEG_POOL_PER_CLASS", "SEG_SHORT_SIDE", "SEG_STRIDE", "SEG_TEMPLATES", "SWEEP_EPSS",
    "SWEEP_LAMS",
    "TEMPERATURE", "ZeroShotSettings", "recipe", "recipe_fields", "ui_range", "with_recipe",
]

# ----------------------------------------------------------------------------- models and prompts

DEFAULT_VLM = "clip-vit-b16"  # CLIP ViT-B/16 (OpenAI): the VLM of all three papers' main tables
# DINOv2 ViT-L/14: OTFusion's VFM (implementation details) and GPUA's DINOv2 row, so the defaults
# reproduce the papers and the eval harness finds their numbers; dinov2-base is in the pickers.
DEFAULT_VFM = "dinov2-large"
DEFAULT_TEMPLATE = "a photo of a {}."  # CLIP's single template (DESIGN: the baseline)
TEMPERATURE = 100.0  # CLIP's logit scale tau: cosine similarities -> class probabilities

# ----------------------------------------------------------------------------- LaZSL crops

LAZSL_CROPS_PAPER = 90  # M in the LaZSL paper (random crops per image)
# Interactive default (app, CLI, eval): each crop is one more VLM forward per image, so 90 crops
# cost 91 forwards per image; 16 keeps a CPU run of a few hundred images to minutes. The eval
# harness notes when it runs with fewer crops than the paper.
LAZSL_CROPS = 16
LAZSL_CROPS_UI = (1, LAZSL_CROPS_PAPER, 1)  # the app's crops slider
LAZSL_CROP_SCALE = (0.6, 0.9)  # crop side as a fraction of the short edge, U(alpha, beta)

# ----------------------------------------------------------------------------- runs

BATCH_SIZE = 32  # images per model forward
# core.models.load_encoder's precisions (int8: CPU only; fp16: CUDA only; bf16: CUDA, and CPUs,
# where it is fast only with AMX or AVX-512 BF16, core.models.load.cpu_has_fast_bf16; "auto": per
# model, the fastest of AUTO_CPU_PRECISIONS on a CPU whose measured cosine passes
# FAST_PATH_MIN_COSINE, else fp32;
# "onnx-int8": CPU only, global image features in ONNX Runtime with per-channel int8 weights,
# optional onnxruntime + onnx, benchmarks/README.md)
PRECISIONS = ("fp32", "auto", "int8", "bf16", "fp16", "onnx-int8")
# The worst cosine to the fp32 features a fast path must keep on natural images (issue 12) for
# "auto" to use it; per model, measured by benchmarks/encode.py --fast-paths and recorded in the
# registry (ModelSpec.int8_worst_cos, onnx_int8_worst_cos, bf16_worst_cos).
FAST_PATH_MIN_COSINE = 0.999
# The CPU paths "auto" tries per model, fastest first (core.models.resolve_precision): bf16 where
# the CPU computes bf16 natively (AMX or AVX-512 BF16: CLIP ViT-B/16 and DINOv2-B 2.3-3x, text
# ~3.5x, worst cosine >= 0.99992), ONNX Runtime int8 where onnxruntime is installed (real size
# on 2 cores: CLIP ViT-B/16 3.46x, DINOv2-B 2.22x best / best), torch int8 (CLIP ViT-B/16 1.4x);
# benchmarks/README.md, "Real-size CPU fast paths".
AUTO_CPU_PRECISIONS = ("bf16", "onnx-int8", "int8")
# What the app and progress lines say the one-time ONNX export + int8 quantisation of a model
# takes (precision "onnx-int8"): measured 36-39 s per real-size ViT-B tower on the project's
# 2-core CPU (benchmarks/README.md, "Through the product path").
ONNX_EXPORT_SECONDS = 40
PRECISION = "fp32"  # CLI and eval: exact features (the papers' numbers are fp32)
# The app's default on a CPU: "auto", per model the fastest path whose measured worst cosine to
# the fp32 features is >= FAST_PATH_MIN_COSINE (0.999), exact fp32 for the models without one
# (unmeasured ones included). The app lists exact fp32 as its first option, and the notes of
# every Run name the precision each model ran in. On a GPU the app runs PRECISION.
APP_CPU_PRECISION = "auto"
EVAL_CHUNK_SIZE = 2048  # images the eval harness reads and encodes at once (bounds memory)

# ----------------------------------------------------------------------------- scale-out
# The sharded feature store (core.pipeline.store) and the Ray Data extraction
# (core.pipeline.distributed, ``python -m core extract``).
STORE_DIR_ENV = "FUSIONLAB_STORE_DIR"  # a store the single-machine path also reads, when set
RAY_REQUIREMENTS = "requirements-ray.txt"  # the optional extra: pip install -r it
ENGINES = ("local", "ray")  # --engine of extract and eval
DECODE_BATCH = 64  # files per CPU decode + preprocess task batch (memory: ~64 decoded images)
# CPUs each model actor asks for where there is no GPU: a fraction, so decode tasks still get a
# core on a 2-core machine (actors holding every CPU would starve the decoders: a deadlock).
RAY_ACTOR_CPUS = 0.5
RAY_DECODE_CPUS = 1.0  # CPUs per read + decode task (Pillow decodes on one core)
RAY_WORKERS = 1  # model actors per model without GPUs (with GPUs: one per GPU share)
SEED = 0  # GPUA's THS minibatches, eval subsets
SWEEP_LAMS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0)  # OTFusion sensitivity grid (paper Fig. 2)
SWEEP_EPSS = (0.005, 0.01, 0.05, 0.1)
GPUA_TARGETS = ("soft", "hard")  # Procrustes targets: P Y (paper, Eq. 13) or Y[argmax P] (code)
# GPUA's refinement objective (Tables 4 and 6; core.methods.gpua.losses): THS (the paper's) or
# the baselines it is compared with.
GPUA_LOSSES = ("ths", "csls", "contrastive", "triplet", "adaptive")
GPUA_TRIPLET_MARGIN = 0.1  # the triplet baseline's constant margin (GPUA gives none; THS's
#                            semantic margin (1 - y_l . y_c) / 2 is ~0.1 for CLIP prompts)
# How UCM mines correspondences (Table 3): "joint" (Eq. 10-12: VFM clusters and VLM semantics,
# weighted by lam) or "semantic" ("Only-S": the VLM's scores alone, i.e. lam = 1).
GPUA_MININGS = ("joint", "semantic")


def _ui(default, low, high, step):
    """A field with a default and the app slider's (minimum, maximum, step)."""
    return field(default=default, metadata={"ui": (low, high, step)})


# ----------------------------------------------------------------------------- segmentation
# Open-vocabulary segmentation over a benchmark (GPUA Tables 2 and 8, ``python -m core seg-eval``).
# Inference as SCLIP / SC-CLIP evaluate MaskCLIP (MMSegmentation "slide" mode): the image is
# resized so its short side is SEG_SHORT_SIDE[dataset] (long side at most SEG_LONG_MAX), then
# 224-pixel windows every 112 pixels; the windows' cosine maps are averaged, resized to the label
# map and argmaxed. Short sides as in SCLIP's per-dataset configs (configs/cfg_*.py: e.g.
# Resize(scale=(2048, 560)) for Cityscapes).
SEG_SHORT_SIDE = {"voc20": 336, "context59": 336, "ade20k": 448, "cocostuff164k": 448,
                  "cityscapes": 560}
SEG_LONG_MAX = 2048  # MMSegmentation's Resize scale (2048, short side), keep_ratio
SEG_CROP = 224  # window side, pixels of the resized image
SEG_STRIDE = 112  # window step
SEG_MODES = ("slide", "whole")  # whole: the resized image in one window, squashed to the input
# MaskCLIP / SCLIP prompt with CLIP's 80 ImageNet templates, averaged ("single": DEFAULT_TEMPLATE)
SEG_TEMPLATES = "openai_imagenet"
SEG_POOL_PER_CLASS = 1024  # GPUA App. C: top-1024 patches per class by CLIP patch-text cosine
# Images of the train split GPUA's patch pool is drawn from (a seeded random subset): the paper
# fits on "an auxiliary training set" without saying how much of it; every window of 1000 images
# gives ~15k candidate patches per ADE20K class before the top-1024 selection.
SEG_FIT_IMAGES = 1000
SEG_METHODS = ("maskclip", "maskclip+gpua")
SEG_DEFAULT_VFM = "dinov3-vitb16"  # GPUA Tables 2 and 8: DINOv3 ViT-B/16 patch features


# ----------------------------------------------------------------------------- per method


@dataclass(frozen=True)
class ZeroShotSettings:
    """CLIP zero-shot (the baseline). Every method turns VLM cosines into probabilities with the
    same ``temperature``, so OTFusion's VLM term, GPUA's and LaZSL's probabilities use it too."""

    temperature: float = TEMPERATURE  # CLIP logit scale tau


# What OTFusion fuses (``OTFusionSettings.setting``), with the paper row each one reproduces.
# "main": every VLM's own image features and every VFM, one GMM each (Table 1, and the official
# code's default); "vfm_only": the VFMs alone (Table 2 "DINOv2-only"); "vlm_only": the VLMs' image
# features alone (Table 2 "CLIP-only"). The VLM probabilities Y_j enter in every setting.
OTFUSION_SETTINGS = ("main", "vfm_only", "vlm_only")
OTFUSION_VARIANTS = ("joint", "concat", "semantic_only", "no_joint")  # Table 2's other rows
RECIPE_NAMES = ("paper", "official")  # our reading of the paper / the authors' released code
# The official OTFusion code's default visual sources beside CLIP ViT-B/16 (its README / main.py):
# DINOv2-with-registers ViT-L/14 and DINOv3 ViT-L/16 (gated on the Hub).
OTFUSION_OFFICIAL_VFMS = ("dinov2-reg-large", "dinov3-vitl16")
OTFUSION_OFFICIAL_VLMS = ("clip-vit-b16",)  # CLIP ViT-B/16, the VLM of its main table


@dataclass(frozen=True)
class OTFusionSettings:
    """OTFusion (Xu et al. 2025), paper defaults (implementation details section).

    ``recipe`` "paper" is our reading of the v1 text; "official" the authors' released solver
    (``OTFUSION_RECIPES["official"]`` holds its values). ``lam`` None means uniform within the VLM
    group (1/J for J VLMs, the official code); ``weights`` None takes the recipe's ("fixed" for
    the paper, "adaptive" for the official code).
    """

    lam: float | None = _ui(0.8, 0.0, 2.0, 0.05)  # weight of the VLM's probabilities Y (per VLM)
    eps: float = _ui(0.01, 0.002, 0.2, 0.001)  # entropic regularisation of the fusion Sinkhorn
    n_iter: int = _ui(10, 1, 30, 1)  # outer iterations (GMM <-> OT), stops earlier on tolerance
    sinkhorn_iter: int = 3  # Sinkhorn iterations per outer iteration ("e.g. 3", as SwAV)
    variant: str = "joint"  # one of OTFUSION_VARIANTS (Table 2 ablations besides "joint")
    setting: str = "main"  # one of OTFUSION_SETTINGS: which visual sources get a GMM
    recipe: str = "paper"  # one of RECIPE_NAMES
    weights: str | None = None  # "fixed" / "adaptive" source weights; None: the recipe's


@dataclass(frozen=True)
class GPUASettings:
    """GPUA (Yu et al., ICML 2026), paper defaults: lam 0.9, eps 0.01, soft targets,
    Z = [VFM, VLM] concatenated (the paper's best setting). ``recipe`` "official" is the public
    code (``GPUA_RECIPES["official"]``; its structural quirks come with the name, see
    ``core.methods.gpua.recipes``)."""

    lam: float = _ui(0.9, 0.0, 1.0, 0.05)  # weight of the VLM score against the VFM clusters
    eps: float = _ui(0.01, 0.002, 0.2, 0.001)  # UCM Sinkhorn regularisation
    targets: str = "soft"  # one of GPUA_TARGETS
    ths_steps: int = _ui(200, 0, 500, 10)  # THS refinement steps (0: the Procrustes map alone)
    ths_k: int = 3  # competing prototypes per sample in THS
    reorthogonalize: bool = True  # keep W (semi-)orthogonal during THS (not in the paper)
    concat_vlm: bool = True  # Z = [VFM, VLM]; False: Z = VFM only (an ablation)
    seed: int = SEED  # THS minibatch generator
    recipe: str = "paper"  # one of RECIPE_NAMES
    n_ucm_iter: int = 5  # UCM rounds (the public code sets it per dataset; 3 is its fallback)
    loss: str = "ths"  # one of GPUA_LOSSES: the refinement objective (Tables 4, 6 ablations)
    mining: str = "joint"  # one of GPUA_MININGS: "semantic" is Table 3's Only-S ablation


@dataclass(frozen=True)
class LaZSLSettings:
    """LaZSL (ICCV 2025) scoring, public-code defaults. The crop count is an extraction setting
    (``ExtractSettings.n_crops``): crops are features, computed before any solve. ``recipe``
    "official" uses the public code's Sinkhorn stopping rule here, and its sentence rule where the
    attribute sentences are encoded (``ExtractSettings.lazsl_recipe``)."""

    theta: float = _ui(0.8, 0.0, 1.0, 0.05)  # weight of crop vs global similarity
    eps: float = 0.1  # Sinkhorn regularisation of each crop-to-attribute problem
    recipe: str = "paper"  # one of RECIPE_NAMES


_PER_METHOD = {"clip": ZeroShotSettings, "otfusion": OTFusionSettings, "gpua": GPUASettings,
               "lazsl": LaZSLSettings}


@dataclass(frozen=True)
class MethodSettings:
    """The settings of every method, one field per method (named as ``core.methods.run.METHODS``).

    ``settings.replace(otfusion={"lam": 0.5})`` returns a copy with the named knobs changed;
    ``settings.as_dict()`` is the nested dict the exports record.
    """

    clip: ZeroShotSettings = field(default_factory=ZeroShotSettings)
    otfusion: OTFusionSettings = field(default_factory=OTFusionSettings)
    gpua: GPUASettings = field(default_factory=GPUASettings)
    lazsl: LaZSLSettings = field(default_factory=LaZSLSettings)

    def __post_init__(self):
        for name, cls in _PER_METHOD.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ValueError(f"MethodSettings.{name}: expected a {cls.__name__}, got "
                                 f"{type(value).__name__}; build it as {cls.__name__}(...).")

    def replace(self, **changes) -> MethodSettings:
        """A copy with per-method changes: a settings instance, or a dict of its fields."""
        unknown = [m for m in changes if m not in _PER_METHOD]
        if unknown:
            raise ValueError(f"MethodSettings.replace: unknown method(s) {unknown}; expected "
                             f"any of {', '.join(_PER_METHOD)}.")
        new = {}
        for method, change in changes.items():
            if isinstance(change, dict):
                current = getattr(self, method)
                names = {f.name for f in fields(current)}
                bad = [k for k in change if k not in names]
                if bad:
                    raise ValueError(f"{type(current).__name__}: unknown field(s) {bad}; "
                                     f"expected any of {', '.join(sorted(names))}.")
                change = replace(current, **change)
            new[method] = change
        return replace(self, **new)

    def as_dict(self) -> dict:
        """``{"clip": {...}, "otfusion": {...}, "gpua": {...}, "lazsl": {...}}``."""
        return asdict(self)


# ----------------------------------------------------------------------------- recipes

OTFUSION_RECIPES: dict[str, OTFusionSettings] = {
    "paper": OTFusionSettings(),
    # The authors' released solver (core.methods.otfusion_common.RECIPES["official"]): VLM
    # weights uniform in their group, adaptive source weights, up to 15 SwAV iterations.
    "official": OTFusionSettings(lam=None, sinkhorn_iter=15, recipe="official",
                                 weights="adaptive"),
}
GPUA_RECIPES: dict[str, GPUASettings] = {
    "paper": GPUASettings(),
    # The public code (core.methods.gpua.recipes.RECIPES["official"]): eps 0.05, hard targets,
    # 400 THS steps without re-projection, 3 UCM rounds; Z = [VFM, VLM] not renormalised.
    "official": GPUASettings(eps=0.05, targets="hard", ths_steps=400, reorthogonalize=False,
                             recipe="official", n_ucm_iter=3),
}
LAZSL_RECIPES: dict[str, LaZSLSettings] = {"paper": LaZSLSettings(),
                                           "official": LaZSLSettings(recipe="official")}
_RECIPES = {"otfusion": OTFUSION_RECIPES, "gpua": GPUA_RECIPES, "lazsl": LAZSL_RECIPES}


def recipe(method: str, name: str = "paper"):
    """The settings of ``method`` under the recipe ``name`` (e.g. ``recipe("gpua", "paper")``)."""
    if method not in _RECIPES:
        raise ValueError(f"recipe: methods with recipes are {', '.join(_RECIPES)}; got "
                         f"{method!r}.")
    table = _RECIPES[method]
    if name not in table:
        raise ValueError(f"recipe: {method} has the recipes {', '.join(table)}; got {name!r}.")
    return table[name]


def recipe_fields(method: str) -> tuple[str, ...]:
    """The fields a recipe of ``method`` decides: those whose value differs between its recipes
    (OTFusion: lam, sinkhorn_iter, recipe, weights). The others (eps, the setting, ...) are the
    user's choice under every recipe."""
    recipes = list(_RECIPES[method].values()) if method in _RECIPES else [recipe(method)]
    return tuple(f.name for f in fields(recipes[0])
                 if len({repr(getattr(r, f.name)) for r in recipes}) > 1)


def with_recipe(settings, name: str):
    """``settings`` (one method's settings) switched to recipe ``name``: every field of
    ``recipe_fields`` takes the recipe's value, the others keep ``settings``' values.

    >>> with_recipe(OTFusionSettings(eps=0.05), "official").eps   # kept: both recipes agree
    0.05
    """
    method = next((m for m, cls in _PER_METHOD.items() if isinstance(settings, cls)), None)
    if method not in _RECIPES:
        raise ValueError(f"with_recipe: expected the settings of one of {', '.join(_RECIPES)}, "
                         f"got {type(settings).__name__}.")
    target = recipe(method, name)
    if settings.recipe == target.recipe:  # already under that recipe: the user's knobs stay
        return settings
    return replace(settings, **{f: getattr(target, f) for f in recipe_fields(method)})


def ui_range(cls, name: str) -> tuple:
    """``(minimum, maximum, step)`` of the app's slider for field ``name`` of settings ``cls``."""
    for f in fields(cls):
        if f.name == name and "ui" in f.metadata:
            return f.metadata["ui"]
    raise ValueError(f"ui_range: {cls.__name__}.{name} has no slider range; fields with one: "
                     + ", ".join(f.name for f in fields(cls) if "ui" in f.metadata) + ".")


# ----------------------------------------------------------------------------- resource limits
# What one input, one session and the shared caches may cost (issue 13). Environment variables
# override some of them at run time (README: "Environment").

ARCHIVE_MAX_ENTRIES = 20_000  # members of one zip
ARCHIVE_MAX_TOTAL_BYTES = 2 * 1024**3  # decompressed bytes of one image set
ARCHIVE_MAX_FILE_BYTES = 512 * 1024**2  # one file or member
ARCHIVE_MAX_RATIO = 100.0  # declared compression ratio of a member or of the whole archive
FEATURE_CACHE_MAX_BYTES = 4 * 1024**3  # FUSIONLAB_CACHE_MAX_BYTES; LRU eviction above it
APP_MAX_UPLOAD_BYTES = 1024**3  # FUSIONLAB_MAX_UPLOAD_BYTES: image bytes one Run may read
APP_MAX_CLASSES = 1000  # class names one Run may have (as many as ImageNet)
APP_SESSION_TTL_S = 3600.0  # FUSIONLAB_SESSION_TTL_S: idle time before a session is dropped
APP_MAX_SESSIONS = 32  # FUSIONLAB_MAX_SESSIONS: live sessions kept (least recently used dropped)
APP_SESSIONS_MAX_BYTES = 2 * 1024**3  # FUSIONLAB_SESSIONS_MAX_BYTES: their estimated bytes
APP_RUN_HISTORY = 5  # records kept per session for the Compare tab (one per Run and recipes)
