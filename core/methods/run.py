"""Every method on one set of cached features: CLIP zero-shot, OTFusion, GPUA, LaZSL.

This is the fast half of the pipeline: it never sees a model or an image, only the tensors in a
:class:`FeatureSet`, so the app re-runs it when a slider moves, the playground runs it on synthetic
features, and the CLI / evaluation harness run it on real ones.

Settings come as one :class:`core.config.MethodSettings` (one frozen dataclass per method, defaults
in ``core.config``); this module is the one place that maps them onto the solvers' keywords.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.config import (
    OTFUSION_SETTINGS,
    SWEEP_EPSS,
    SWEEP_LAMS,
    GPUASettings,
    MethodSettings,
    OTFusionSettings,
)
from core.methods.gpua.fit import concat_features, fit_gpua
from core.methods.lazsl import lazsl_scores
from core.methods.otfusion import RECIPES as OTFUSION_SOLVER_RECIPES
from core.methods.otfusion import otfusion
from core.methods.otfusion_inductive import fit_otfusion
from core.methods.zeroshot import zeroshot_probs
from core.metrics import accuracy

METHODS = ("clip", "otfusion", "gpua", "lazsl")
METHOD_TITLES = {"clip": "CLIP zero-shot", "otfusion": "OTFusion", "gpua": "GPUA", "lazsl": "LaZSL"}


@dataclass(frozen=True)
class FeatureSet:
    """The tensors the solvers need, for ``n`` images and ``k`` classes (all L2-normalised).

    Attributes
    ----------
    vlm_image : Tensor, shape (n, d_t)
        VLM (CLIP) global image embeddings.
    text : Tensor, shape (k, d_t)
        One text prototype per class (template-ensembled).
    vfm_image : Tensor, shape (n, d_v) or None
        VFM (DINO) global features; None means "use the VLM's own image features as the VFM".
    crops : Tensor, shape (n, 1 + m, d_t) or None
        LaZSL views: index 0 is the global view, 1..m the crops.
    attributes : Tensor, shape (k, a, d_t) or None
        LaZSL attribute sentences per class, padded; ``attribute_mask`` (k, a) marks the real ones.
    labels : Tensor, shape (n,), long, or None
        True class index per image, -1 where unknown.
    extra_vlm_images, extra_texts : tuple of Tensor, shapes (n, d_j) and (k, d_j)
        Further VLMs (e.g. SigLIP beside CLIP), aligned: OTFusion fuses every VLM's probabilities
        (Eq. 6's sum over j) and, in its main setting, every VLM's image features. The baseline,
        GPUA and LaZSL use the first VLM only.
    extra_vfm_images : tuple of Tensor, each (n, d_i)
        Further VFMs (e.g. DINOv3 beside DINOv2), fused by OTFusion; GPUA uses the first VFM.
    vlm_names, vfm_names : tuple of str
        Display names of the VLMs (first = ``vlm_image``) and VFMs, for reports; empty: "VLM 1",
        "VFM 1", ...
    """

    vlm_image: Tensor
    text: Tensor
    vfm_image: Tensor | None = None
    crops: Tensor | None = None
    attributes: Tensor | None = None
    attribute_mask: Tensor | None = None
    labels: Tensor | None = None
    extra_vlm_images: tuple[Tensor, ...] = ()
    extra_texts: tuple[Tensor, ...] = ()
    extra_vfm_images: tuple[Tensor, ...] = ()
    vlm_names: tuple[str, ...] = ()
    vfm_names: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.extra_vlm_images) != len(self.extra_texts):
            raise ValueError(
                f"FeatureSet: {len(self.extra_vlm_images)} extra VLM image features but "
                f"{len(self.extra_texts)} extra text prototypes; give one of each per extra VLM.")
        if self.extra_vfm_images and self.vfm_image is None:
            raise ValueError("FeatureSet: extra_vfm_images without vfm_image; put the first VFM "
                             "in vfm_image.")

    @property
    def n_images(self) -> int:
        return int(self.vlm_image.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.text.shape[0])

    def vfm_or_vlm(self) -> Tensor:
        """The VFM features, or the VLM's image features when no VFM was chosen (CLIP-only row)."""
        return self.vlm_image if self.vfm_image is None else self.vfm_image

    def vlms(self) -> list[tuple[str, Tensor, Tensor]]:
        """Every VLM as ``(name, image features (n, d_j), text prototypes (k, d_j))``."""
        images = (self.vlm_image, *self.extra_vlm_images)
        texts = (self.text, *self.extra_texts)
        return [(_name(self.vlm_names, i, "VLM"), x, t)
                for i, (x, t) in enumerate(zip(images, texts))]

    def vfms(self) -> list[tuple[str, Tensor]]:
        """Every VFM as ``(name, features (n, d_i))``; empty without a VFM."""
        if self.vfm_image is None:
            return []
        return [(_name(self.vfm_names, i, "VFM"), v)
                for i, v in enumerate((self.vfm_image, *self.extra_vfm_images))]


def _name(names: tuple[str, ...], i: int, kind: str) -> str:
    return names[i] if i < len(names) else f"{kind} {i + 1}"


def otfusion_sources(features: FeatureSet, setting: str) -> list[tuple[str, Tensor]]:
    """The visual sources OTFusion fits a GMM on, as ``(name, features (n, d))``, for ``setting``
    (``core.config.OTFUSION_SETTINGS``): "main" every VLM's image features then every VFM (Table 1,
    the official code); "vfm_only" the VFMs (Table 2 "DINOv2-only"); "vlm_only" the VLMs' image
    features (Table 2 "CLIP-only"). Names of VLM image features end in " image"."""
    if setting not in OTFUSION_SETTINGS:
        raise ValueError(f"otfusion setting: expected one of {', '.join(OTFUSION_SETTINGS)}, got "
                         f"{setting!r}.")
    vlm_images = [(f"{name} image", x) for name, x, _ in features.vlms()]
    if setting == "vlm_only":
        return vlm_images
    if setting == "vfm_only":
        if not features.vfms():
            raise ValueError("otfusion setting 'vfm_only' needs a VFM; pick one (e.g. DINOv2) or "
                             "use the 'main' or 'vlm_only' setting.")
        return features.vfms()
    return vlm_images + features.vfms()


@dataclass(frozen=True)
class MethodResult:
    """One method's answer on a FeatureSet.

    Attributes
    ----------
    method : str
    probs : Tensor, shape (n, k)
        Class probabilities (rows sum to 1).
    pred : Tensor, shape (n,), long
    accuracy : float or None
        On images with a known label, when any.
    seconds : float
        Wall time of the solve (features already computed).
    details : object
        The solver's own result (OTFusionResult, Alignment, LazslResult) for the views that need it.
    sources : tuple of str
        The features behind the numbers, e.g. ``("CLIP ViT-B/16 image", "DINOv2 ViT-L/14",
        "Y: CLIP ViT-B/16")`` (visual sources, then "Y: " + each VLM whose probabilities enter).
    diagnostics : dict
        What a method's internal stages did, for honest reporting. GPUA with THS steps:
        ``procrustes_pred`` (n,) the predictions of the Procrustes map W0 alone,
        ``procrustes_accuracy`` (None without labels) and ``changed_by_ths`` (how many predictions
        the THS refinement changed).
    """

    method: str
    probs: Tensor
    pred: Tensor
    accuracy: float | None
    seconds: float
    details: object = field(default=None, repr=False)
    diagnostics: dict = field(default_factory=dict, repr=False)
    sources: tuple[str, ...] = ()


def labelled_accuracy(pred: Tensor, labels: Tensor | None) -> float | None:
    """Accuracy over images whose label is known (label >= 0); None when there are none."""
    if labels is None:
        return None
    known = labels >= 0
    if not bool(known.any()):
        return None
    return accuracy(pred[known], labels[known])


def gpua_inputs(features: FeatureSet, settings: GPUASettings) -> Tensor:
    """Z for GPUA, shape (n, d_v) or (n, d_v + d_t): the first VFM's features, or with
    ``settings.concat_vlm`` the paper's best ``concat_features(VFM, VLM)`` (the official recipe
    does not renormalise the concatenation, as its public code). Without a VFM the VLM's own
    image features stand in (and are not concatenated with themselves)."""
    if settings.concat_vlm and features.vfm_image is not None:
        return concat_features(features.vfm_image, features.vlm_image,
                               renormalize=settings.recipe != "official")
    return features.vfm_or_vlm()


def gpua_sources(features: FeatureSet, settings: GPUASettings) -> tuple[str, ...]:
    """The names of the features GPUA aligns (Z, the VLM image features, the text prototypes),
    for ``MethodResult.sources`` and the reports of a fit on a pool."""
    vlm = features.vlms()[0][0]
    vfms = features.vfms()
    if not vfms:
        return (f"{vlm} image", f"text: {vlm}")
    z = f"[{vfms[0][0]}, {vlm} image]" if settings.concat_vlm else vfms[0][0]
    return (z, f"{vlm} image", f"text: {vlm}")


def _vlm_probs(features: FeatureSet, settings: MethodSettings) -> list[Tensor]:
    """Zero-shot probabilities (n, k) of every VLM, at the shared CLIP temperature."""
    return [zeroshot_probs(x, t, temperature=settings.clip.temperature)
            for _, x, t in features.vlms()]


def _run_clip(features: FeatureSet, settings: MethodSettings):
    probs = zeroshot_probs(features.vlm_image, features.text, temperature=settings.clip.temperature)
    vlm = features.vlms()[0][0]
    return probs, None, (f"{vlm} image", f"text: {vlm}")


def otfusion_weights(settings: OTFusionSettings) -> str:
    """The source weights OTFusion runs with under ``settings``: ``settings.weights``, or its
    recipe's default when None ("fixed" for the paper recipe, "adaptive" for the official one);
    one of ``OTFUSION_WEIGHTS``."""
    return settings.weights or OTFUSION_SOLVER_RECIPES[settings.recipe].weights


def otfusion_inputs(features: FeatureSet, settings: MethodSettings):
    """What OTFusion fuses under ``settings.otfusion``: ``(visual sources, each (n, d_s); VLM
    probabilities, each (n, k); their names for MethodResult.sources)``. ``semantic_only`` fits
    no GMM; the VLM image features are passed as a placeholder source and not named."""
    s = settings.otfusion
    sources = [] if s.variant == "semantic_only" else otfusion_sources(features, s.setting)
    names = tuple(n for n, _ in sources) + tuple(f"Y: {n}" for n, _, _ in features.vlms())
    return [v for _, v in sources] or [features.vlm_image], _vlm_probs(features, settings), names


def _otfusion_keywords(s) -> dict:
    """The solver keywords of ``OTFusionSettings`` ``s`` (one map for otfusion and fit_otfusion)."""
    return dict(recipe=s.recipe, weights=s.weights, lam=s.lam, eps=s.eps, n_iter=s.n_iter,
                sinkhorn_iter=s.sinkhorn_iter, variant=s.variant)


def _run_otfusion(features: FeatureSet, settings: MethodSettings):
    vs, ys, names = otfusion_inputs(features, settings)
    labels = features.labels
    if labels is not None and bool((labels < 0).any()):
        labels = None  # history accuracy needs every label; the app reports accuracy separately
    res = otfusion(vfm_features=vs, vlm_probs=ys, labels=labels,
                   **_otfusion_keywords(settings.otfusion))
    return res.probs, res, names


def fit_otfusion_with(pool: FeatureSet, settings: MethodSettings):
    """OTFusion's inductive mode (the official code's): fit the GMMs and source weights on the
    unlabeled ``pool`` under ``settings.otfusion`` and return the ``OTFusionModel``; score other
    images with ``model.predict_proba(*otfusion_inputs(test, settings)[:2])``."""
    vs, ys, _ = otfusion_inputs(pool, settings)
    return fit_otfusion(vs, ys, **_otfusion_keywords(settings.otfusion))


def fit_gpua_with(pool: FeatureSet, settings: GPUASettings, text: Tensor | None = None):
    """``fit_gpua`` on a pool's features with ``settings`` (the one settings-to-keywords map).

    ``text`` (K, d_t) defaults to the pool's prototypes (the eval harness passes the test split's).
    UCM's initial correspondences P0 use ``fit_gpua``'s own temperature (``TEMPERATURE``), not
    ``MethodSettings.clip.temperature``: that is what every release so far has done.
    Returns the fitted ``Alignment``.
    """
    return fit_gpua(
        vfm_features=gpua_inputs(pool, settings),
        vlm_features=pool.vlm_image,
        text_features=pool.text if text is None else text,
        recipe=settings.recipe,
        lam=settings.lam,
        eps=settings.eps,
        n_ucm_iter=settings.n_ucm_iter,
        targets=settings.targets,
        ths_steps=settings.ths_steps,
        ths_k=settings.ths_k,
        reorthogonalize=settings.reorthogonalize,
        loss=settings.loss,
        mining=settings.mining,
        generator=torch.Generator().manual_seed(settings.seed),
    )


def _run_gpua(features: FeatureSet, settings: MethodSettings):
    align = fit_gpua_with(features, settings.gpua)
    z = gpua_inputs(features, settings.gpua)
    probs = align.predict_proba(z, features.text, temperature=settings.clip.temperature)
    return probs, align, gpua_sources(features, settings.gpua)


def _run_lazsl(features: FeatureSet, settings: MethodSettings):
    if features.crops is None or features.attributes is None:
        raise ValueError(
            "LaZSL needs crop features and attribute features; extract them with n_crops > 0 "
            "(and attribute descriptors, or the class-name fallback)."
        )
    res = lazsl_scores(
        features.crops[:, 0],
        features.crops[:, 1:],
        features.attributes,
        features.attribute_mask,
        theta=settings.lazsl.theta,
        eps=settings.lazsl.eps,
        recipe=settings.lazsl.recipe,
        return_plans=False,
    )
    # Scores are transport-weighted cosines; CLIP's logit scale turns them into probabilities
    # comparable with the baseline's.
    probs = torch.softmax(settings.clip.temperature * res.scores, dim=-1)
    vlm = features.vlms()[0][0]
    return probs, res, (f"{vlm} crops", f"attributes: {vlm}")


_RUNNERS = {"clip": _run_clip, "otfusion": _run_otfusion, "gpua": _run_gpua, "lazsl": _run_lazsl}


def _gpua_diagnostics(features: FeatureSet, settings: MethodSettings, align, pred: Tensor) -> dict:
    """What THS did on top of the Procrustes map: it can help (the paper) or fit the UCM
    pseudo-labels' mistakes (seen on synthetic data), so the app shows both."""
    if settings.gpua.ths_steps == 0 or getattr(align, "W0", None) is None:
        return {}
    before = align.procrustes_only().predict(gpua_inputs(features, settings.gpua), features.text)
    return {
        "procrustes_pred": before,
        "procrustes_accuracy": labelled_accuracy(before, features.labels),
        "changed_by_ths": int((before != pred.to(before.device)).sum()),
    }


_DIAGNOSTICS = {"gpua": _gpua_diagnostics}


def _check_settings(settings) -> MethodSettings:
    if settings is None:
        return MethodSettings()
    if not isinstance(settings, MethodSettings):
        raise ValueError(f"settings: expected a core.config.MethodSettings, got "
                         f"{type(settings).__name__}; build one as MethodSettings(otfusion="
                         "OTFusionSettings(lam=...), ...).")
    return settings


def run_method(
    method: str, features: FeatureSet, settings: MethodSettings | None = None
) -> MethodResult:
    """Run one method on cached features with ``settings`` (default: ``MethodSettings()``)."""
    if method not in _RUNNERS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}.")
    settings = _check_settings(settings)
    start = time.perf_counter()
    probs, details, sources = _RUNNERS[method](features, settings)
    seconds = time.perf_counter() - start
    pred = probs.argmax(dim=-1)
    diagnose = _DIAGNOSTICS.get(method)
    return MethodResult(
        method=method,
        probs=probs,
        pred=pred,
        accuracy=labelled_accuracy(pred, features.labels),
        seconds=seconds,
        details=details,
        diagnostics=diagnose(features, settings, details, pred) if diagnose else {},
        sources=sources,
    )


def run_methods(
    features: FeatureSet, methods=METHODS, settings: MethodSettings | None = None
) -> dict[str, MethodResult]:
    """Run several methods; the CLIP baseline always runs first (every view compares to it)."""
    order = ["clip"] + [m for m in methods if m != "clip"]
    unknown = [m for m in order if m not in _RUNNERS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected a subset of {', '.join(METHODS)}.")
    return {m: run_method(m, features, settings) for m in order}


def sensitivity_sweep(
    features: FeatureSet,
    *,
    lams=SWEEP_LAMS,
    epss=SWEEP_EPSS,
    settings: MethodSettings | None = None,
) -> list[dict]:
    """OTFusion over a lam x eps grid (the paper's Fig. 2), on cached features.

    Returns rows ``{"lam", "eps", "accuracy" (None without labels), "agreement_with_clip"}``;
    without labels the agreement with the baseline still shows how far fusion moves predictions.
    """
    settings = _check_settings(settings)
    base = run_method("clip", features, settings).pred
    rows = []
    for eps in epss:
        for lam in lams:
            res = run_method("otfusion", features,
                             settings.replace(otfusion={"lam": lam, "eps": eps}))
            rows.append(
                {
                    "lam": float(lam),
                    "eps": float(eps),
                    "accuracy": res.accuracy,
                    "agreement_with_clip": float((res.pred == base).float().mean()),
                }
            )
    return rows
