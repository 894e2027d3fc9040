"""The model registry: every VLM and VFM the lab can use, as frozen dataclasses.

An entry of `MODELS` fully decides a model (STYLE.md rule 7): its library, weights, preprocessing,
token layout and output dimension. Nothing is keyed on name strings.

Any VLM's image tower is also a VFM: `model_choices("vfm")` lists the VLM keys after the DINO ones,
and loading a VLM key gives the same encoder, whose `encode_images` (the projected image embedding)
is then used as the VFM feature ("CLIP-only" rows of OTFusion). Loading lives in `core.models.load`;
tests register tiny random-initialised entries of the same architectures (`core.models.tiny`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from core.config import BATCH_SIZE

__all__ = [
    "MODELS", "ModelSpec", "register_model", "get_spec", "list_models", "model_choices",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP training set statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2 / DINOv3
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_KINDS = ("vlm", "vfm")
# The ModelSpec field recording each fast path's measured worst cosine to fp32.
WORST_COS_FIELDS = {"int8": "int8_worst_cos", "onnx-int8": "onnx_int8_worst_cos",
                    "bf16": "bf16_worst_cos"}
_LIBRARIES = ("open_clip", "transformers")


@dataclass(frozen=True)
class ModelSpec:
    """One model, fully described.

    Preprocessing is ``resize_mode="shortest"``: resize the short side to ``resize_size`` then
    center-crop ``image_size`` (CLIP: 224 -> 224; DINO's eval transform: 256 -> 224), or
    ``"squash"``: resize straight to ``image_size`` x ``image_size`` (SigLIP).
    """

    key: str  # registry key, e.g. "clip-vit-b16"
    display_name: str  # for the UI, e.g. "CLIP ViT-B/16 (OpenAI)"
    kind: str  # "vlm" (image + text towers) or "vfm" (image only)
    library: str  # "open_clip" or "transformers"
    model_id: str  # open_clip architecture ("ViT-B-16") or transformers repo id
    pretrained: str | None  # open_clip tag ("openai", "webli"); None for transformers
    hf_repo: str | None  # Hub repo holding the weights; None only for random-init entries
    image_size: int  # network input side, pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" or "bilinear"
    resize_size: int  # short side before the center crop ("shortest" mode)
    patch_size: int | None  # None: no patch grid (ResNet)
    n_prefix_tokens: int  # tokens before the patches: 1 (CLS), 5 (CLS + 4 registers), 0 (none)
    output_dim: int  # dimension of encode_images
    resize_mode: str = "shortest"  # or "squash"
    quick_gelu: bool = False  # OpenAI CLIP weights were trained with QuickGELU: must match
    dense: bool = False  # has the MaskCLIP dense path (open_clip ViT with a class token)
    tokenizer_repo: str | None = None  # Hub repo of a HF tokenizer; None: open_clip's bundled BPE
    gated: bool = False  # the Hub repo needs an accepted licence and a token
    hidden: bool = False  # test / benchmark entries the UI must not list
    random_init: bool = False  # build the architecture with random weights; never touch the Hub
    # Explicit architecture for random-init entries: open_clip CLIP kwargs (embed_dim, vision_cfg,
    # text_cfg) or transformers config kwargs including "model_type". Excluded from the hash.
    arch_config: Mapping | None = field(default=None, hash=False)
    # Worst cosine to the fp32 image features on natural images of each fast path (None: not
    # measured): int8 (torch dynamic quantisation of the Linear layers) and onnx-int8 (ONNX
    # Runtime, per-channel int8 weights), measured by benchmarks/encode.py --fast-paths; bf16
    # (CPU autocast). Precision "auto" runs a path only where its cosine reaches
    # core.config.FAST_PATH_MIN_COSINE (`core.models.load.resolve_precision`). Measurements, not
    # identity: the cache keys ignore them (`identity`).
    int8_worst_cos: float | None = None
    onnx_int8_worst_cos: float | None = None
    bf16_worst_cos: float | None = None
    # Images per forward on the scale-out path (core.pipeline.distributed: one GPU actor per
    # model); sized for a GPU with >= 24 GB at fp32. Not part of the identity: batching does not
    # change the features (core.models.encoders runs a batch of one as two for that).
    batch_size: int = BATCH_SIZE

    def __post_init__(self):
        problems = []
        if self.kind not in _KINDS:
            problems.append(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if self.library not in _LIBRARIES:
            problems.append(f"library must be one of {_LIBRARIES}, got {self.library!r}")
        if self.library == "open_clip" and self.pretrained is None and not self.random_init:
            problems.append("open_clip entries need their pretrained tag (e.g. 'openai')")
        if self.library == "transformers" and self.pretrained is not None:
            problems.append("pretrained must be None for transformers entries")
        if self.library == "transformers" and self.kind != "vfm":
            problems.append("transformers entries are vision-only (kind 'vfm')")
        if not self.random_init and not self.hf_repo:
            problems.append("hf_repo is required unless random_init=True")
        if self.random_init and not self.hidden:
            problems.append("random_init entries are for tests and must be hidden=True")
        if self.interpolation not in ("bicubic", "bilinear"):
            problems.append(
                f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}"
            )
        if self.resize_mode not in ("shortest", "squash"):
            problems.append(f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std > 0")
        if self.image_size < 1 or self.resize_size < self.image_size:
            problems.append("need 1 <= image_size <= resize_size")
        if self.patch_size is not None and self.image_size % self.patch_size:
            problems.append("image_size must be a multiple of patch_size")
        if self.dense and (self.library != "open_clip" or self.patch_size is None):
            problems.append("dense=True needs an open_clip ViT (a patch_size)")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if self.n_prefix_tokens < 0 or self.output_dim < 1:
            problems.append("need n_prefix_tokens >= 0 and output_dim >= 1")
        if problems:
            raise ValueError(f"ModelSpec '{self.key}': " + "; ".join(problems) + ".")

    def worst_cos(self, precision: str) -> float | None:
        """The measured worst cosine to fp32 of ``precision`` ("int8", "onnx-int8", "bf16");
        None where it was not measured (and for every other precision)."""
        name = WORST_COS_FIELDS.get(precision)
        return None if name is None else getattr(self, name)

    @property
    def grid_size(self) -> tuple[int, int] | None:
        """(h, w) of the patch grid at ``image_size``, None without patches."""
        if self.patch_size is None:
            return None
        return self.image_size // self.patch_size, self.image_size // self.patch_size

    def identity(self) -> dict:
        """The fields that decide the features (for cache keys): weights + preprocessing."""
        out = asdict(self)
        for name in ("key", "display_name", "kind", "gated", "hidden", *WORST_COS_FIELDS.values(),
                     "batch_size"):
            out.pop(name)
        out["arch_config"] = copy.deepcopy(dict(self.arch_config)) if self.arch_config else None
        return out


def _clip(key, name, arch, repo, *, size, patch, dim, dense=True, batch=256, **worst_cos):
    return ModelSpec(
        key=key, display_name=name, kind="vlm", library="open_clip", model_id=arch,
        pretrained="openai", hf_repo=repo, image_size=size, mean=CLIP_MEAN, std=CLIP_STD,
        interpolation="bicubic", resize_size=size, patch_size=patch,
        n_prefix_tokens=1 if patch else 0, output_dim=dim, quick_gelu=True, dense=dense,
        batch_size=batch, **worst_cos,
    )


def _dino(key, name, repo, *, patch, dim, n_prefix, gated=False, batch=256, **worst_cos):
    # DINOv2 and DINOv3 alike: their repositories' classification eval transform (short side 256,
    # bicubic, center crop 224), which is also the papers' center-crop-224 protocol. (The
    # transformers DINOv3 processor squashes to 224 x 224 bilinear instead; it distorts the aspect
    # ratio and does not match the papers' numbers' preprocessing.)
    return ModelSpec(
        key=key, display_name=name, kind="vfm", library="transformers", model_id=repo,
        pretrained=None, hf_repo=repo, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        interpolation="bicubic", resize_size=256, patch_size=patch, n_prefix_tokens=n_prefix,
        output_dim=dim, gated=gated, batch_size=batch, **worst_cos,
    )


_BUILTIN = [
    _clip("clip-vit-b32", "CLIP ViT-B/32 (OpenAI)", "ViT-B-32",
          "timm/vit_base_patch32_clip_224.openai", size=224, patch=32, dim=512),
    # *_worst_cos: measured on the real-size architectures with random weights
    # (core.models.realsize; benchmarks/README.md, "Real-size CPU fast paths": int8 from its
    # first table, onnx-int8 from "Through the product path", bf16 the lowest of the global,
    # MaskCLIP dense / DINOv2 patch and text cosines of "bf16 on CPUs with AMX"), not on the
    # released weights.
    _clip("clip-vit-b16", "CLIP ViT-B/16 (OpenAI)", "ViT-B-16",
          "timm/vit_base_patch16_clip_224.openai", size=224, patch=16, dim=512,
          int8_worst_cos=0.9999, onnx_int8_worst_cos=0.99985, bf16_worst_cos=0.99992),
    _clip("clip-vit-l14", "CLIP ViT-L/14 (OpenAI)", "ViT-L-14",
          "timm/vit_large_patch14_clip_224.openai", size=224, patch=14, dim=768, batch=128),
    _clip("clip-rn50", "CLIP ResNet-50 (OpenAI)", "RN50", "timm/resnet50_clip.openai",
          size=224, patch=None, dim=1024, dense=False),
    ModelSpec(
        key="siglip-vit-b16", display_name="SigLIP ViT-B/16 (WebLI)", kind="vlm",
        library="open_clip", model_id="ViT-B-16-SigLIP", pretrained="webli",
        hf_repo="timm/ViT-B-16-SigLIP", image_size=224, mean=SIGLIP_MEAN, std=SIGLIP_STD,
        interpolation="bicubic", resize_size=224, resize_mode="squash", patch_size=16,
        n_prefix_tokens=0, output_dim=768, tokenizer_repo="timm/ViT-B-16-SigLIP", batch_size=256,
    ),
    _dino("dinov2-small", "DINOv2 ViT-S/14", "facebook/dinov2-small",
          patch=14, dim=384, n_prefix=1),
    _dino("dinov2-base", "DINOv2 ViT-B/14", "facebook/dinov2-base",
          patch=14, dim=768, n_prefix=1, int8_worst_cos=0.9973, onnx_int8_worst_cos=0.99917,
          bf16_worst_cos=0.99996),
    _dino("dinov2-large", "DINOv2 ViT-L/14", "facebook/dinov2-large",
          patch=14, dim=1024, n_prefix=1, batch=128),
    _dino("dinov2-giant", "DINOv2 ViT-g/14", "facebook/dinov2-giant",
          patch=14, dim=1536, n_prefix=1, batch=64),
    _dino("dinov2-reg-small", "DINOv2 ViT-S/14 + registers",
          "facebook/dinov2-with-registers-small", patch=14, dim=384, n_prefix=5),
    _dino("dinov2-reg-base", "DINOv2 ViT-B/14 + registers",
          "facebook/dinov2-with-registers-base", patch=14, dim=768, n_prefix=5),
    _dino("dinov2-reg-large", "DINOv2 ViT-L/14 + registers",
          "facebook/dinov2-with-registers-large", patch=14, dim=1024, n_prefix=5, batch=128),
    _dino("dinov2-reg-giant", "DINOv2 ViT-g/14 + registers",
          "facebook/dinov2-with-registers-giant", patch=14, dim=1536, n_prefix=5, batch=64),
    _dino("dinov3-vits16", "DINOv3 ViT-S/16 (gated)", "facebook/dinov3-vits16-pretrain-lvd1689m",
          patch=16, dim=384, n_prefix=5, gated=True),
    _dino("dinov3-vitb16", "DINOv3 ViT-B/16 (gated)", "facebook/dinov3-vitb16-pretrain-lvd1689m",
          patch=16, dim=768, n_prefix=5, gated=True),
    # OTFusion's official default VFM with dinov2-reg-large. n_prefix 5 = CLS + the 4 storage
    # (register) tokens every DINOv3 ViT has (facebookresearch/dinov3 hub/backbones.py,
    # n_storage_tokens=4; the checkpoints' config.json sets num_register_tokens 4, although
    # transformers' DINOv3ViTConfig defaults to 0). The loader checks it against the config.
    _dino("dinov3-vitl16", "DINOv3 ViT-L/16 (gated)", "facebook/dinov3-vitl16-pretrain-lvd1689m",
          patch=16, dim=1024, n_prefix=5, gated=True, batch=128),
]

MODELS: dict[str, ModelSpec] = {spec.key: spec for spec in _BUILTIN}



def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add ``spec`` to `MODELS` (idempotent for an identical spec). Returns it."""
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec: expected a ModelSpec, got {type(spec).__name__}.")
    existing = MODELS.get(spec.key)
    if existing is not None and existing != spec and not overwrite:
        raise ValueError(
            f"register_model: key '{spec.key}' is already registered with a different spec; "
            "pick another key or pass overwrite=True."
        )
    MODELS[spec.key] = spec
    return spec


def get_spec(key: str) -> ModelSpec:
    """The registry entry for ``key``; ValueError listing the valid keys otherwise."""
    if isinstance(key, ModelSpec):
        return key
    spec = MODELS.get(key)
    if spec is None:
        valid = ", ".join(s.key for s in MODELS.values() if not s.hidden)
        raise ValueError(f"unknown model {key!r}; valid keys: {valid}.")
    return spec


def list_models(kind: str | None = None, *, include_hidden: bool = False) -> list[ModelSpec]:
    """Registry entries of ``kind`` ("vlm", "vfm" or None for all), in registry order."""
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind: expected one of {_KINDS} or None, got {kind!r}.")
    return [
        s for s in MODELS.values()
        if (kind is None or s.kind == kind) and (include_hidden or not s.hidden)
    ]


def model_choices(kind: str, *, extra: Sequence[str] = (),
                  include_hidden: bool = False) -> list[tuple[str, str]]:
    """(label, key) pairs for a model picker of ``kind`` ("vlm" or "vfm").

    A VFM picker lists the vision-only models, then every VLM's image tower. ``extra`` names
    hidden entries to list first (e.g. the tiny test models); ``include_hidden`` lists all.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {_KINDS}, got {kind!r}.")
    extra_specs = [get_spec(k) for k in extra]

    def specs(of: str) -> list[ModelSpec]:
        found = [s for s in extra_specs if s.kind == of]
        found += list_models(of, include_hidden=include_hidden)
        return list({s.key: s for s in found}.values())  # first occurrence wins, in order

    choices = [(s.display_name, s.key) for s in specs(kind)]
    if kind == "vfm":
        choices += [(f"{s.display_name} - image tower", s.key) for s in specs("vlm")]
    return choices
