"""CLIP-style zero-shot classification: probabilities, prompts, ensembling, descriptor sentences.

The CLIP baseline (Radford et al. 2021) scores an image against one text prototype per class,

    Y[i, k] = exp(tau * cos(x_i, t_k)) / sum_k' exp(tau * cos(x_i, t_k'))      (Eq. 1 of OTFusion)

with tau = 100. Every fusion method in this project starts from, and is compared against, ``Y``.
Prompt ensembling averages the L2-normalised text embeddings of several templates per class and
renormalises. LaZSL describes each class by LLM-style attributes turned into sentences such as
"cat, which has pointed ears" (see ``descriptor_sentence``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from core.checks import check_classes, check_matrix, check_positive, l2_normalize
from core.config import DEFAULT_TEMPLATE, TEMPERATURE

__all__ = [
    "DEFAULT_TEMPLATE",
    "descriptor_sentence",
    "descriptor_sentences",
    "ensemble_text_features",
    "format_prompts",
    "predict",
    "zeroshot_logits",
    "zeroshot_probs",
]

# LaZSL's connective rule: descriptors that already carry a verb or an article read better after
# "which" / "which is" than after the default "which has".
_WHICH_IS_WORDS = ("a", "an", "used")
_WHICH_WORDS = ("has", "often", "typically", "may", "can")
SENTENCE_RECIPES = ("paper", "official")


def _check_pair(image_features, text_features) -> tuple[Tensor, Tensor]:
    x = check_matrix(image_features, "image_features")
    t = check_matrix(text_features, "text_features")
    if x.shape[1] != t.shape[1]:
        raise ValueError(
            f"image_features and text_features must share their feature dimension, got "
            f"{x.shape[1]} and {t.shape[1]}; encode both with the same VLM."
        )
    check_classes(t.shape[0], name="text_features")
    if x.dtype != t.dtype:
        dtype = torch.promote_types(x.dtype, t.dtype)
        x, t = x.to(dtype), t.to(dtype)
    return x, t


def zeroshot_logits(image_features, text_features, *, temperature: float = TEMPERATURE) -> Tensor:
    """Scaled cosine similarities ``temperature * cos(x_i, t_k)``.

    Parameters
    ----------
    image_features : Tensor, shape (n, d)
        Image embeddings of the VLM (normalised here).
    text_features : Tensor, shape (k, d)
        One text prototype per class, k >= 2 (normalised here).
    temperature : float, default 100.0
        CLIP's logit scale tau.

    Returns
    -------
    Tensor, shape (n, k)
    """
    x, t = _check_pair(image_features, text_features)
    temperature = check_positive(temperature, "temperature")
    return temperature * (l2_normalize(x) @ l2_normalize(t).T)  # (n, k)


def zeroshot_probs(image_features, text_features, *, temperature: float = TEMPERATURE) -> Tensor:
    """CLIP zero-shot class probabilities (Eq. 1 of OTFusion).

    Parameters
    ----------
    image_features : Tensor, shape (n, d)
    text_features : Tensor, shape (k, d)
        k >= 2 class prototypes in the same space as the images.
    temperature : float, default 100.0

    Returns
    -------
    Tensor, shape (n, k)
        Row-stochastic: ``softmax(temperature * normalise(X) normalise(T)^T)`` along classes, in
        the promoted dtype of the inputs (float32 stays float32).
    """
    return torch.softmax(
        zeroshot_logits(image_features, text_features, temperature=temperature), dim=1
    )


def predict(probs) -> Tensor:
    """Class index per row, ``argmax`` over the last dimension.

    Parameters
    ----------
    probs : Tensor, shape (n, k)
        Probabilities or scores.

    Returns
    -------
    Tensor, shape (n,), dtype long
    """
    p = check_matrix(probs, "probs")
    return p.argmax(dim=1)


def format_prompts(
    class_names: Sequence[str], templates: Sequence[str] | None = None
) -> list[list[str]]:
    """Fill every template with every class name ("_" becomes a space).

    Every ``{}`` of a template is replaced by the name; other braces are kept as written (no
    ``str.format``), so a template like ``"a photo of a {} {style}"`` is safe.

    Parameters
    ----------
    class_names : sequence of str, length k
        Non-empty strings.
    templates : sequence of str, length t, default ``[DEFAULT_TEMPLATE]``
        Each holds at least one ``{}`` placeholder.

    Returns
    -------
    list of k lists of t prompts
    """
    if isinstance(class_names, str) or len(class_names) == 0:
        raise ValueError(
            f"class_names: expected a non-empty list of strings, got {class_names!r}."
        )
    templates = [DEFAULT_TEMPLATE] if templates is None else templates
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(
            f"templates: expected a non-empty list of strings with '{{}}' each, got "
            f"{templates!r}; wrap a single template in a list."
        )
    bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
    if bad:
        raise ValueError(
            f"templates: each template needs a '{{}}' placeholder for the class name, got "
            f"{bad[:3]!r}; write it like 'a photo of a {{}}.'"
        )
    prompts = []
    for name in class_names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class_names: expected non-empty strings, got {name!r}.")
        name = name.replace("_", " ")
        prompts.append([t.replace("{}", name) for t in templates])
    return prompts


def ensemble_text_features(per_template_features) -> Tensor:
    """Prompt ensembling (CLIP's recipe): average each class's unit-norm template embeddings and
    renormalise the mean.

    Parameters
    ----------
    per_template_features : Tensor, shape (k, t, d)
        Text embeddings of t templates for each of k classes, L2-normalised along d (as every
        ``core.models`` encoder returns them). They are not normalised again here: in float32
        that would move the last bit of a third of the rows and change every result downstream.

    Returns
    -------
    Tensor, shape (k, d), L2-normalised rows.

    Raises
    ------
    ValueError
        Not 3-D, or rows whose norm is not 1 (normalise them first with ``l2_normalize``).
    """
    f = check_matrix(per_template_features, "per_template_features", ndim=3)
    norms = f.norm(dim=-1)
    tol = max(1e-3, 10 * torch.finfo(f.dtype).eps)
    if bool(((norms - 1).abs() > tol).any()):
        raise ValueError(
            f"per_template_features: expected L2-normalised embeddings (norm 1 along the last "
            f"dimension), got norms in [{float(norms.min()):.4g}, {float(norms.max()):.4g}]; "
            "normalise them first (core.checks.l2_normalize)."
        )
    return l2_normalize(f.mean(dim=1))


def _clean(text: str) -> str:
    text = " ".join(str(text).split())
    return text.rstrip(" .").strip()


def _connective_official(desc: str) -> str:
    """The public LaZSL code's rule (``make_descriptor_sentence`` in ``loading_helpers.py``):
    ``str.startswith`` tests on the descriptor, case-sensitive, in this order."""
    if desc.startswith("a"):  # any word starting with the letter a: "antlers", "about 5 cm"
        return "which is"
    if desc.startswith(("has", "often", "typically", "may", "can")):  # also "canine", "hasty"
        return "which"
    if desc.startswith("used"):
        return "which is"
    return "which has"


def descriptor_sentence(class_name: str, descriptor: str, *, recipe: str = "paper") -> str:
    """LaZSL's sentence for one attribute of one class.

    "{class}, which has {descriptor}" by default; "which is" when the descriptor starts with
    "a", "an" or "used"; plain "which" when it starts with "has", "often", "typically", "may" or
    "can". Whitespace is collapsed, trailing periods dropped and "_" in the class name becomes a
    space. Examples: ("dog", "four legs") -> "dog, which has four legs"; ("wren", "a small bird")
    -> "wren, which is a small bird"; ("otter", "often lives in rivers") -> "otter, which often
    lives in rivers". An empty descriptor gives the class name alone.

    ``recipe`` decides what "starts with" means:

    - ``"paper"`` (default), our reading of the rule as the paper states it: the descriptor's first
      *word*, case-insensitive ("ants as food" -> "which has", "A small bird" -> "which is");
    - ``"official"``, the public code: a case-sensitive *prefix* test, tried in the order
      "a", then "has"/"often"/"typically"/"may"/"can", then "used". Any descriptor starting with
      the letter a gets "which is" ("antlers" -> "deer, which is antlers"), "canine teeth" gets
      "which", and "A small bird" gets "which has". Only the connective changes: the cleaning
      above and the empty-descriptor fallback apply to both (the public code writes
      "{class}, which has " for a class without descriptors).
    """
    if recipe not in SENTENCE_RECIPES:
        raise ValueError(
            f"recipe: expected one of {list(SENTENCE_RECIPES)} ('paper': first word, "
            f"'official': the public code's prefix test), got {recipe!r}."
        )
    name = _clean(str(class_name).replace("_", " "))
    if not name:
        raise ValueError(f"class_name: expected a non-empty string, got {class_name!r}.")
    desc = _clean(descriptor)
    if not desc:
        return name
    if recipe == "official":
        return f"{name}, {_connective_official(desc)} {desc}"
    first = desc.split(" ", 1)[0].lower()
    if first in _WHICH_IS_WORDS:
        connective = "which is"
    elif first in _WHICH_WORDS:
        connective = "which"
    else:
        connective = "which has"
    return f"{name}, {connective} {desc}"


def descriptor_sentences(
    attributes: Mapping[str, Sequence[str]],
    class_names: Sequence[str],
    *,
    recipe: str = "paper",
) -> tuple[list[str], Tensor, Tensor]:
    """Sentences for every (class, descriptor) pair, padded to a (k, a) index and mask.

    Parameters
    ----------
    attributes : mapping class name -> list of descriptors
        Classes missing from the mapping, or with no non-empty descriptor, fall back to a single
        sentence made of the class name alone (so every class has at least one attribute).
    class_names : sequence of str, length k
    recipe : {"paper", "official"}, default "paper"
        The connective rule of :func:`descriptor_sentence`.

    Returns
    -------
    sentences : list of str
        Flat list to encode once with the text tower.
    index : Tensor, shape (k, a), dtype long
        ``index[c, j]`` is the position in ``sentences`` of the j-th attribute of class c, or -1
        in padding; a = the largest number of attributes of any class.
    mask : Tensor, shape (k, a), dtype bool
        True where ``index`` is valid (the ``attribute_mask`` of
        ``core.methods.lazsl.lazsl_scores``).
    """
    if isinstance(class_names, str) or len(class_names) == 0:
        raise ValueError(f"class_names: expected a non-empty sequence, got {class_names!r}.")
    if recipe not in SENTENCE_RECIPES:
        raise ValueError(
            f"recipe: expected one of {list(SENTENCE_RECIPES)} ('paper': first word, "
            f"'official': the public code's prefix test), got {recipe!r}."
        )
    if not isinstance(attributes, Mapping):
        raise ValueError(
            f"attributes: expected a dict class name -> list of descriptors, got "
            f"{type(attributes).__name__}."
        )
    sentences: list[str] = []
    rows: list[list[int]] = []
    for name in class_names:
        descs = attributes.get(name, ())
        if isinstance(descs, str):
            descs = [descs]
        row = []
        for desc in descs:
            if _clean(desc):
                row.append(len(sentences))
                sentences.append(descriptor_sentence(name, desc, recipe=recipe))
        if not row:
            row.append(len(sentences))
            sentences.append(descriptor_sentence(name, ""))
        rows.append(row)
    width = max(len(r) for r in rows)
    index = torch.full((len(rows), width), -1, dtype=torch.long)
    for c, row in enumerate(rows):
        index[c, : len(row)] = torch.tensor(row, dtype=torch.long)
    return sentences, index, index >= 0
