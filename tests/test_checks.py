"""core.checks.check_finite: its one-reduction fast path must accept and refuse exactly what the
entry-by-entry check does."""

import pytest
import torch

from core.checks import check_finite, check_matrix


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_finite_entries_are_refused_and_counted(bad, dtype):
    x = torch.randn(50, 8).to(dtype)
    x[3, 2] = bad
    x[7, 1] = bad
    with pytest.raises(ValueError, match="got 2 NaN/Inf entries"):
        check_finite(x, "feats")


def test_plus_and_minus_inf_whose_sum_is_nan_are_refused():
    x = torch.zeros(4, 4)
    x[0, 0], x[1, 1] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match="feats: expected finite values, got 2"):
        check_matrix(x, "feats")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_finite_entries_whose_sum_overflows_pass(dtype):
    big = torch.finfo(dtype).max / 2
    x = torch.full((10, 10), big, dtype=dtype)
    assert not torch.isfinite(x.sum())  # the fast path cannot decide: the full check runs
    check_finite(x, "feats")
    assert check_matrix(x, "feats") is x


def test_fast_path_agrees_with_the_entrywise_check_on_random_cases():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        scale = 10 ** float(torch.randint(-3, 40, (1,), generator=gen))
        x = torch.randn(20, 5, generator=gen) * scale
        if torch.rand(1, generator=gen) < 0.5:
            i = torch.randint(0, x.numel(), (1,), generator=gen)
            x.view(-1)[i] = [float("nan"), float("inf"), -float("inf")][int(i) % 3]
        finite = bool(torch.isfinite(x).all())
        if finite:
            check_finite(x, "x")
        else:
            with pytest.raises(ValueError):
                check_finite(x, "x")
