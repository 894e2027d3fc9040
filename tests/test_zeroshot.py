"""Tests for core.methods.zeroshot: CLIP probabilities, prompts, ensembling, LaZSL sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.methods.zeroshot import (
    DEFAULT_TEMPLATE,
    descriptor_sentence,
    descriptor_sentences,
    ensemble_text_features,
    format_prompts,
    predict,
    zeroshot_logits,
    zeroshot_probs,
)

ATOL32 = 1e-6
ATOL64 = 1e-12


def _features(n=13, k=7, d=9, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype) * 3.0  # not normalised on purpose
    t = torch.randn(k, d, generator=gen, dtype=dtype) * 0.5
    return x, t


def _naive_probs(x, t, tau):
    """Loop reference in numpy: softmax over classes of tau * cosine."""
    x, t = np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64)
    out = np.zeros((x.shape[0], t.shape[0]))
    for i in range(x.shape[0]):
        logits = []
        for k in range(t.shape[0]):
            cos = x[i] @ t[k] / (np.linalg.norm(x[i]) * np.linalg.norm(t[k]))
            logits.append(tau * cos)
        logits = np.array(logits) - max(logits)
        out[i] = np.exp(logits) / np.exp(logits).sum()
    return out


@pytest.mark.parametrize("tau", [1.0, 100.0])
def test_probs_match_naive_loop(tau):
    x, t = _features()
    got = zeroshot_probs(x, t, temperature=tau)
    torch.testing.assert_close(got, torch.from_numpy(_naive_probs(x, t, tau)), atol=ATOL64, rtol=0)


def test_probs_rows_sum_to_one_and_float32_matches_float64():
    x, t = _features(n=50, k=20, d=32)
    p64 = zeroshot_probs(x, t)
    p32 = zeroshot_probs(x.float(), t.float())
    assert p32.dtype == torch.float32 and p64.dtype == torch.float64
    assert p64.shape == (50, 20)
    torch.testing.assert_close(p64.sum(1), torch.ones(50, dtype=torch.float64), atol=ATOL64, rtol=0)
    torch.testing.assert_close(p32.sum(1), torch.ones(50), atol=ATOL32, rtol=0)
    # tau = 100 amplifies float32 rounding of the cosines (~1e-7) by 100.
    torch.testing.assert_close(p32.double(), p64, atol=1e-4, rtol=0)


def test_probs_invariant_to_feature_scale_and_logits_consistent():
    x, t = _features()
    torch.testing.assert_close(zeroshot_probs(5 * x, 0.1 * t), zeroshot_probs(x, t))
    logits = zeroshot_logits(x, t, temperature=100.0)
    assert float(logits.abs().max()) <= 100.0 + 1e-9
    torch.testing.assert_close(torch.softmax(logits, 1), zeroshot_probs(x, t))


def test_known_answer_prediction():
    t = torch.eye(3)
    x = torch.tensor([[0.1, 0.9, 0.0], [2.0, 0.0, 0.1], [0.0, 0.2, 5.0]])
    probs = zeroshot_probs(x, t)
    assert predict(probs).tolist() == [1, 0, 2]
    assert predict(probs).dtype == torch.long


def test_mixed_dtypes_promote():
    x, t = _features()
    assert zeroshot_probs(x.float(), t).dtype == torch.float64


@pytest.mark.parametrize(
    ("x", "t", "match"),
    [
        (torch.randn(4, 5), torch.randn(3, 6), "dimension"),
        (torch.randn(4, 5), torch.randn(1, 5), "at least 2 classes"),
        (torch.randn(4), torch.randn(3, 4), "2-D"),
        (torch.full((4, 5), float("nan")), torch.randn(3, 5), "finite"),
    ],
)
def test_probs_validation(x, t, match):
    with pytest.raises(ValueError, match=match):
        zeroshot_probs(x, t)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("inf")])
def test_bad_temperature(tau):
    x, t = _features()
    with pytest.raises(ValueError, match="temperature"):
        zeroshot_probs(x, t, temperature=tau)


def test_format_prompts():
    prompts = format_prompts(["golden_retriever", "cat"], ["a photo of a {}.", "art of the {}"])
    assert prompts == [
        ["a photo of a golden retriever.", "art of the golden retriever"],
        ["a photo of a cat.", "art of the cat"],
    ]
    assert format_prompts(["red_fox"]) == [[DEFAULT_TEMPLATE.replace("{}", "red fox")]]
    # Every placeholder is filled; other braces are text, not str.format fields.
    assert format_prompts(["cat"], ["a {} like a {}", "{style} of a {}"]) == [
        ["a cat like a cat", "{style} of a cat"]
    ]
    with pytest.raises(ValueError, match="placeholder"):
        format_prompts(["cat"], ["no placeholder"])
    with pytest.raises(ValueError, match="wrap a single template"):
        format_prompts(["cat"], "a photo of a {}.")
    with pytest.raises(ValueError, match="class_names"):
        format_prompts([])
    with pytest.raises(ValueError, match="non-empty strings"):
        format_prompts(["cat", "  "])


def _unit_rows(k, t, d, seed=3, dtype=torch.float64):
    f = torch.randn(k, t, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return f / f.norm(dim=-1, keepdim=True)


def test_ensemble_text_features_matches_loop():
    f = _unit_rows(4, 5, 8)
    got = ensemble_text_features(f)
    for k in range(4):
        mean = sum(f[k, j] for j in range(5)) / 5
        torch.testing.assert_close(got[k], mean / mean.norm(), atol=ATOL64, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(4, dtype=torch.float64))
    # one template: ensembling returns the embedding itself (renormalised: up to rounding)
    one = _unit_rows(3, 1, 8, dtype=torch.float32)
    torch.testing.assert_close(ensemble_text_features(one), one[:, 0], atol=ATOL32, rtol=0)


def test_ensemble_known_answer_and_order_invariance():
    e = torch.eye(4, dtype=torch.float64)
    # Two orthogonal templates: the prototype is their bisector.
    got = ensemble_text_features(torch.stack([e[:2], e[2:]]))  # (2, 2, 4)
    half = 0.5**0.5
    expected = torch.tensor([[half, half, 0, 0], [0, 0, half, half]], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=ATOL64, rtol=0)
    f = _unit_rows(3, 6, 5)
    torch.testing.assert_close(ensemble_text_features(f.flip(1)), ensemble_text_features(f),
                               atol=ATOL64, rtol=0)


def test_ensemble_validation():
    f = _unit_rows(2, 3, 4)
    with pytest.raises(ValueError, match="3-D"):
        ensemble_text_features(f[0])
    with pytest.raises(ValueError, match="L2-normalised"):
        ensemble_text_features(f * 2.0)
    # float32 unit rows (as encoders return them) pass, in float64 too
    ensemble_text_features(f.float().double())


@pytest.mark.parametrize(
    ("name", "desc", "expected"),
    [
        ("dog", "four legs", "dog, which has four legs"),
        ("wren", "a small bird", "wren, which is a small bird"),
        ("owl", "an owl-like face", "owl, which is an owl-like face"),
        ("hammer", "used for driving nails", "hammer, which is used for driving nails"),
        ("otter", "often lives in rivers", "otter, which often lives in rivers"),
        ("cat", "has whiskers", "cat, which has whiskers"),
        ("koala", "typically eats eucalyptus", "koala, which typically eats eucalyptus"),
        ("frog", "may be green", "frog, which may be green"),
        ("bat", "can fly", "bat, which can fly"),
        # first word only: "ants" is not "an", "useful" is not "used"
        ("aardvark", "ants as food", "aardvark, which has ants as food"),
        ("knife", "useful edges", "knife, which has useful edges"),
        # cleaning: whitespace, trailing periods, underscores, capitalised connective word
        ("  sea_lion ", "  Often   seen on rocks.. ", "sea lion, which Often seen on rocks"),
        ("fox", "", "fox"),
    ],
)
def test_descriptor_sentence_rules(name, desc, expected):
    assert descriptor_sentence(name, desc) == expected
    assert descriptor_sentence(name, desc, recipe="paper") == expected


@pytest.mark.parametrize(
    "desc,paper,official",
    [
        # the public code tests the first letter: any descriptor starting with "a"
        ("antlers", "which has antlers", "which is antlers"),
        ("ants as food", "which has ants as food", "which is ants as food"),
        ("a small bird", "which is a small bird", "which is a small bird"),
        ("an owl-like face", "which is an owl-like face", "which is an owl-like face"),
        ("used for cutting", "which is used for cutting", "which is used for cutting"),
        ("useful edges", "which has useful edges", "which has useful edges"),
        ("has whiskers", "which has whiskers", "which has whiskers"),
        ("often lives in rivers", "which often lives in rivers", "which often lives in rivers"),
        ("typically eats grass", "which typically eats grass", "which typically eats grass"),
        ("may be green", "which may be green", "which may be green"),
        ("can fly", "which can fly", "which can fly"),
        # prefixes, not words: "canine", "hasp", "mayfly" get the bare "which"
        ("canine teeth", "which has canine teeth", "which canine teeth"),
        ("mayfly wings", "which has mayfly wings", "which mayfly wings"),
        # case-sensitive in the public code
        ("A small bird", "which is A small bird", "which has A small bird"),
        ("Often seen on rocks", "which Often seen on rocks", "which has Often seen on rocks"),
        ("four legs", "which has four legs", "which has four legs"),
    ],
)
def test_official_descriptor_rule_tests_prefixes(desc, paper, official):
    assert descriptor_sentence("x", desc) == f"x, {paper}"
    assert descriptor_sentence("x", desc, recipe="official") == f"x, {official}"


def test_descriptor_sentences_pass_the_recipe_and_reject_unknown_ones():
    attributes = {"deer": ["antlers", "a long neck"], "owl": []}
    sentences, _, _ = descriptor_sentences(attributes, ["deer", "owl"], recipe="official")
    assert sentences == ["deer, which is antlers", "deer, which is a long neck", "owl"]
    assert descriptor_sentences(attributes, ["deer", "owl"])[0][0] == "deer, which has antlers"
    with pytest.raises(ValueError, match="recipe"):
        descriptor_sentences(attributes, ["deer"], recipe="authors")
    with pytest.raises(ValueError, match="recipe"):
        descriptor_sentence("deer", "antlers", recipe="authors")


def test_descriptor_sentences_padding_and_fallback():
    attributes = {
        "cat": ["whiskers", "a small pet", "can purr"],
        "dog": ["four legs"],
        "eel": [],  # no descriptors: falls back to the class name
        "fish": ["  ", "fins."],  # blank descriptors are dropped
    }
    names = ["cat", "dog", "eel", "fish", "bird"]  # "bird" missing from the mapping
    sentences, index, mask = descriptor_sentences(attributes, names)
    assert index.shape == mask.shape == (5, 3)
    assert index.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [3, 1, 1, 1, 1]
    assert torch.equal(mask, index >= 0)
    rows = [[sentences[j] for j in index[c][mask[c]].tolist()] for c in range(5)]
    assert rows == [
        ["cat, which has whiskers", "cat, which is a small pet", "cat, which can purr"],
        ["dog, which has four legs"],
        ["eel"],
        ["fish, which has fins"],
        ["bird"],
    ]
    assert len(sentences) == 7  # every sentence once, no padding entries
    assert sorted(index[mask].tolist()) == list(range(7))


def test_descriptor_sentences_validation():
    with pytest.raises(ValueError, match="class_names"):
        descriptor_sentences({"a": ["x"]}, [])
    with pytest.raises(ValueError, match="attributes"):
        descriptor_sentences([("a", ["x"])], ["a"])


def test_probs_of_uniform_logits():
    # identical prototypes in two classes share the mass equally
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = zeroshot_probs(torch.tensor([[0.3, 0.7]]), t)
    torch.testing.assert_close(p, torch.full((1, 2), 0.5))
    assert math.isclose(float(p.sum()), 1.0, abs_tol=ATOL32)
