"""What the evaluation harness takes and gives: ``EvalConfig`` (a run's settings), one
``MethodRow`` per method and recipe, and a ``DatasetReport`` per dataset (``core.eval.report``
turns them into tables)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import (
    BATCH_SIZE,
    DEFAULT_VFM,
    DEFAULT_VLM,
    EVAL_CHUNK_SIZE,
    LAZSL_CROPS,
    PRECISION,
    RECIPE_NAMES,
    SEED,
    SWEEP_EPSS,
    SWEEP_LAMS,
    MethodSettings,
)
from core.data import SkippedFile
from core.methods.run import METHODS


@dataclass(frozen=True)
class EvalConfig:
    """Everything a run depends on besides the data (defaults from ``core.config``: the papers'
    solver settings; LaZSL with ``LAZSL_CROPS`` crops, noted in the report as not the paper's).

    ``extra_vlms`` / ``extra_vfms`` are fused by OTFusion beside the first ones (which the other
    methods use). OTFusion runs once per name in ``otfusion_recipes``, on the same features: each
    run is ``core.config.with_recipe(solver.otfusion, name)``: the knobs a recipe decides (lam,
    Sinkhorn iterations, weights) take that recipe's values, the others (eps, iterations, setting,
    variant) keep ``solver.otfusion``'s.
    """

    methods: tuple[str, ...] = METHODS
    vlm: str = DEFAULT_VLM
    vfm: str | None = DEFAULT_VFM
    extra_vlms: tuple[str, ...] = ()
    extra_vfms: tuple[str, ...] = ()
    solver: MethodSettings = field(default_factory=MethodSettings)
    otfusion_recipes: tuple[str, ...] = RECIPE_NAMES
    otfusion_shots: int = 0  # 0: transductive on the test split (paper); N: inductive, N per class
    gpua_shots: int = 0  # 0: the whole train split (GPUA); 16: GPUA*
    gpua_fit: str = "train"  # or "test" (transductive)
    seed: int = SEED  # GPUA* pool, max_images subsets and GPUA's THS (overrides solver's)
    max_images: int | None = None  # class-balanced subset of each split, for quick runs
    template: str | None = None  # overrides the preset's prompt (not the paper protocol)
    n_crops: int = LAZSL_CROPS
    attributes_file: str | None = None
    attributes_dir: str | None = None
    lazsl_class_names: bool = False
    batch_size: int = BATCH_SIZE
    device: str | None = None
    precision: str = PRECISION  # of the encoders (core.models.load_encoder)
    chunk_size: int = EVAL_CHUNK_SIZE
    sweep: bool = False
    sweep_lams: tuple[float, ...] = SWEEP_LAMS
    sweep_epss: tuple[float, ...] = SWEEP_EPSS

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}.")
        recipes = self.otfusion_recipes
        if not recipes or len(set(recipes)) < len(recipes) or not set(recipes) <= set(
                RECIPE_NAMES):
            raise ValueError(f"otfusion_recipes: got {list(self.otfusion_recipes)}; give each of "
                             f"{', '.join(RECIPE_NAMES)} at most once.")
        if self.gpua_fit not in ("train", "test"):
            raise ValueError(f"gpua_fit: expected 'train' or 'test', got {self.gpua_fit!r}.")
        for name in ("otfusion_shots", "gpua_shots", "n_crops", "batch_size", "chunk_size",
                     "max_images"):  # counts; shots and crops may be 0
            value, low = getattr(self, name), 0 if name.endswith(("shots", "crops")) else 1
            if value is not None and value < low:
                raise ValueError(f"{name} (--{name.replace('_', '-')}): got {value}; use a "
                                 f"number >= {low}.")


@dataclass(frozen=True)
class MethodRow:
    """One method on one dataset. accuracy and paper are percentages; status ok/skipped/failed."""

    method: str
    title: str
    protocol: str
    status: str
    accuracy: float | None = None
    n_images: int = 0
    seconds: float = 0.0
    paper: float | None = None
    paper_source: str = ""
    paper_exact: bool = True
    other_reported: tuple[dict, ...] = ()
    note: str = ""
    recipe: str = ""  # OTFusion, GPUA, LaZSL: the recipe that ran ("" for CLIP)
    sources: tuple[str, ...] = ()  # the features behind the number (MethodResult.sources)

    @property
    def diff(self) -> float | None:
        if self.accuracy is None or self.paper is None:
            return None
        return self.accuracy - self.paper

    @property
    def key(self) -> str:
        """Unique within a report: the method and its recipe ("otfusion:official")."""
        return f"{self.method}:{self.recipe}" if self.recipe else self.method


@dataclass(frozen=True)
class DatasetReport:
    """A dataset's results, timings and the settings that produced them."""

    dataset: str
    display_name: str
    n_classes: int
    n_test: int
    n_gpua_pool: int
    template: str
    rows: tuple[MethodRow, ...]
    extract_seconds: dict
    settings: dict
    notes: tuple[str, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    sweep: tuple[dict, ...] = ()

    def row(self, key: str) -> MethodRow | None:
        """The row of ``key`` (``MethodRow.key``), or the first row of the method ``key``."""
        return next((r for r in self.rows if key in (r.key, r.method)), None)
