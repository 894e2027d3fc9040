"""Class lists, the 11 benchmark dataset presets, and LaZSL attribute descriptors.

Class names and the single CoOp prompt per dataset are data shipped in ``assets/presets/``
(``classnames.json``, ``templates.json``): the label order of the standard CoOp splits, underscores
as in the CoOp lists. Presets expose them with underscores replaced by spaces (``class_names``, for
prompts) and as shipped (``raw_class_names``, to match split files).

ImageNet: the class names come from ``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES`` when
open_clip is installed (it is a requirement; the shipped list is identical, which a test checks) and
from the shipped file otherwise; ``DatasetPreset.source`` says which. Its 80-prompt ensemble is
``OPENAI_IMAGENET_TEMPLATES`` from the same module, as format strings (``templates_ensemble``).
That module holds only constants; we execute it on its own rather than ``import open_clip``, which
pulls in torch and timm (seconds) just to read a list.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PRESET_DIR = Path(__file__).resolve().parents[2] / "assets" / "presets"
MAX_TEXT_FILE_BYTES = 32 * 1024 * 1024  # class lists and descriptor files are small
MAX_CLASS_NAME_CHARS = 200  # CLIP reads 77 tokens of a prompt: a longer name is a pasting mistake

# key -> display name, in the order of the CoOp / OTFusion tables.
_DISPLAY_NAMES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech-101",
    "oxford_pets": "Oxford-IIIT Pets",
    "stanford_cars": "Stanford Cars",
    "flowers102": "Oxford Flowers-102",
    "food101": "Food-101",
    "fgvc_aircraft": "FGVC Aircraft",
    "sun397": "SUN397",
    "dtd": "DTD (textures)",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101 (actions)",
}


# ----------------------------------------------------------------------------- class lists


@dataclass(frozen=True)
class ClassList:
    """Cleaned class names (order kept) and what was changed on the way (duplicates removed)."""

    names: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.names)


def parse_classes(text: str) -> ClassList:
    """Parse class names typed or pasted by a user.

    One class per line, or comma-separated when the text is a single line (a line may itself hold
    commas: "bird of paradise, plant" on its own line stays one class). A JSON list is accepted too.
    Names are trimmed, empty entries dropped, and duplicates removed case-insensitively (the first
    spelling wins) with a warning naming them.

    Raises ``ValueError`` when fewer than 2 classes remain.
    """
    if not isinstance(text, str):
        raise ValueError(f"classes: expected text, got {type(text).__name__}.")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").strip()
    if text.startswith("[") and (text.endswith("]") or '"' in text):  # meant as a JSON list
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"classes: the text starts like a JSON list but is not valid JSON ({exc.msg} at "
                f"character {exc.pos + 1}); write it as [\"cat\", \"dog\"], or give one class per "
                "line."
            ) from None
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ValueError(
                "classes: expected a JSON list of strings such as [\"cat\", \"dog\"], got a list "
                "holding " + ", ".join(sorted({type(p).__name__ for p in parsed
                                               if not isinstance(p, str)})) + "."
            )
        return _class_list(parsed)
    sep = "\n" if "\n" in text else ","
    return _class_list(text.split(sep))


def load_classes_file(path: str | os.PathLike) -> ClassList:
    """Read class names from a ``.txt`` file (as ``parse_classes``) or a ``.json`` string list."""
    text = _read_text(path, "class file")
    if Path(path).suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"class file {Path(path).name}: invalid JSON ({exc}).") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"class file {Path(path).name}: expected a JSON list of strings such as "
                f'["cat", "dog"], got {type(names).__name__}.'
            )
        return _class_list(names)
    return parse_classes(text)


def _class_list(raw: list[str]) -> ClassList:
    names: list[str] = []
    first: dict[str, str] = {}
    dupes: list[str] = []
    for item in raw:
        name = _strip_quotes(" ".join(item.split()))
        if not name:
            continue
        if len(name) > MAX_CLASS_NAME_CHARS:
            raise ValueError(
                f"classes: class {len(names) + 1} is {len(name):,} characters long (it starts "
                f"{name[:40]!r}); the limit is {MAX_CLASS_NAME_CHARS} (CLIP reads at most 77 "
                "tokens of a prompt). Shorten it, or check that the list is split into names: one "
                "per line or comma-separated."
            )
        key = name.casefold()
        if key in first:
            dupes.append(repr(name) if name == first[key] else f"{name!r} (same as {first[key]!r})")
            continue
        first[key] = name
        names.append(name)
    if not names:
        raise ValueError(
            "classes: no class names found; enter one class per line or separate them with "
            "commas, e.g. 'cat, dog', or pick a dataset preset."
        )
    if len(names) < 2:
        raise ValueError(
            f"classes: expected at least 2 classes, got 1 ({names[0]!r}); add the other classes "
            "the images could belong to."
        )
    notes = ()
    if dupes:
        notes = (f"removed {len(dupes)} duplicate class name(s) (case-insensitive): "
                 + ", ".join(dupes[:20]) + (", ..." if len(dupes) > 20 else ""),)
    return ClassList(names=tuple(names), warnings=notes)


def _strip_quotes(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return name[1:-1].strip()
    return name


# ----------------------------------------------------------------------------- dataset presets


@dataclass(frozen=True)
class DatasetPreset:
    """One benchmark's label vocabulary and zero-shot prompt (CoOp protocol).

    class_names : prompt-ready names (underscores replaced by spaces), in label order.
    raw_class_names : the names as in the CoOp lists (same order).
    template : the single CoOp prompt, a format string with one ``{}``.
    templates_ensemble : extra prompts for ensembling (ImageNet: OpenAI's 80), else empty.
    source : where the class names were read from.

    ImageNet's names are not all unique ("missile" and "sunglasses" name two classes each, as in
    open_clip); keep labels as indices, not names.
    """

    key: str
    display_name: str
    class_names: tuple[str, ...]
    raw_class_names: tuple[str, ...]
    template: str
    templates_ensemble: tuple[str, ...] = ()
    source: str = "assets/presets/classnames.json"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _open_clip_metadata() -> ModuleType | None:
    """open_clip's ``zero_shot_metadata`` module, or None when open_clip is not installed."""
    loaded = sys.modules.get("open_clip.zero_shot_metadata")
    if loaded is not None:
        return loaded
    try:
        spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "zero_shot_metadata.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("_open_clip_zero_shot_metadata", path)
    if module_spec is None or module_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception:  # a future open_clip reorganised the module: fall back to the shipped list
        return None
    return module


def _build_presets() -> dict[str, DatasetPreset]:
    classnames = json.loads((PRESET_DIR / "classnames.json").read_text(encoding="utf-8"))
    templates = json.loads((PRESET_DIR / "templates.json").read_text(encoding="utf-8"))
    meta = _open_clip_metadata()
    presets = {}
    for key, display in _DISPLAY_NAMES.items():
        raw = tuple(classnames[key])
        ensemble: tuple[str, ...] = ()
        source = "assets/presets/classnames.json"
        if key == "imagenet" and meta is not None:
            names = getattr(meta, "IMAGENET_CLASSNAMES", None)
            if names is not None and len(names) == len(raw):
                raw, source = tuple(names), "open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES"
            # open_clip stores the prompts as lambdas; calling one with "{}" gives a format string.
            ensemble = tuple(t("{}") for t in getattr(meta, "OPENAI_IMAGENET_TEMPLATES", ()))
        presets[key] = DatasetPreset(
            key=key,
            display_name=display,
            class_names=tuple(n.replace("_", " ") for n in raw),
            raw_class_names=raw,
            template=templates[key],
            templates_ensemble=ensemble,
            source=source,
        )
    return presets


PRESETS: dict[str, DatasetPreset] = _build_presets()


def get_preset(name: str) -> DatasetPreset:
    """Look a preset up by key or display name, ignoring case, spaces and hyphens."""
    wanted = _norm_key(str(name))
    for preset in PRESETS.values():
        if wanted in (_norm_key(preset.key), _norm_key(preset.display_name)):
            return preset
    raise ValueError(
        f"unknown dataset preset {name!r}; valid presets: {', '.join(PRESETS)}."
    )


def _norm_key(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


# ----------------------------------------------------------------------------- attributes (LaZSL)


def load_attributes(
    source: str | bytes | os.PathLike,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    on_missing: str = "error",
) -> dict[str, list[str]]:
    """Read DCLIP-style descriptors ``{class: [descriptor, ...]}`` from a path or JSON text.

    Descriptors are trimmed; empty and repeated ones dropped. With ``class_names`` the result is
    keyed by those names, in their order, matching the file's keys ignoring case, underscores,
    hyphens, slashes and repeated spaces ("great_white_shark" finds "Great white shark");
    classes absent from the file raise ``ValueError`` naming them (``on_missing="error"``) or are
    left out with one warning (``on_missing="warn"``: the caller then falls back to the bare class
    name).
    """
    if on_missing not in ("error", "warn"):
        raise ValueError(f"on_missing: expected 'error' or 'warn', got {on_missing!r}.")
    if isinstance(source, bytes):
        text, label = source.decode("utf-8-sig"), "attributes"
    elif isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        text, label = source, "attributes"
    else:
        text, label = _read_text(source, "attribute file"), f"attribute file {Path(source).name}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label}: invalid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"{label}: expected a JSON object {{class: [descriptor, ...]}}, got "
            f"{type(data).__name__}."
        )
    attrs: dict[str, list[str]] = {}
    for cls, descriptors in data.items():
        if not isinstance(descriptors, list) or not all(isinstance(d, str) for d in descriptors):
            raise ValueError(
                f"{label}: class {cls!r} must map to a list of strings, got "
                f"{type(descriptors).__name__}; e.g. {{\"cat\": [\"whiskers\", \"pointed ears\"]}}."
            )
        cleaned = list(dict.fromkeys(" ".join(d.split()) for d in descriptors))
        cleaned = [d for d in cleaned if d]
        if not cleaned:
            raise ValueError(f"{label}: class {cls!r} has no descriptors; add at least one.")
        attrs[cls] = cleaned
    if class_names is None:
        return attrs

    by_key = {_attr_key(k): v for k, v in attrs.items()}
    result = {c: by_key[_attr_key(c)] for c in class_names if _attr_key(c) in by_key}
    missing = [c for c in class_names if c not in result]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
        msg = (f"{label}: no descriptors for {len(missing)} of {len(class_names)} classes "
               f"({shown}); add them to the file or remove those classes.")
        if on_missing == "error":
            raise ValueError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return result


def _attr_key(name: str) -> str:
    # Release class names lose hyphens and slashes ("Black_footed_Albatross",
    # "apartment_building/outdoor") that descriptor files keep: match without them.
    return " ".join(name.replace("_", " ").replace("-", " ").replace("/", " ").split()).casefold()


def _read_text(path: str | os.PathLike, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: {str(path)!r} is not a file; check the path.")
    size = p.stat().st_size
    if size > MAX_TEXT_FILE_BYTES:
        raise ValueError(
            f"{what} {p.name}: {size / 2**20:.0f} MiB is larger than the "
            f"{MAX_TEXT_FILE_BYTES / 2**20:.0f} MiB limit for a text file."
        )
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {p.name}: not UTF-8 text ({exc}); save it as UTF-8.") from exc
