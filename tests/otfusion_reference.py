"""An independent reference of OTFusion's official recipe, written from the list of facts in
issue 10 / ``core.methods.otfusion_official`` and nothing of our solver: a loop over classes for
the start, the GMM in the chunked (N, K, d) form the authors use (no matrix-product expansion),
the probability-domain SwAV Sinkhorn written plainly (a copy of Q, in-place normalisations, the
max-change test), and the agreement weights counted directly.

Used by tests/test_otfusion_official.py and, as the "naive chunked GMM", by
benchmarks/otfusion_official.py. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import torch

CHUNK = 1000  # images per (chunk, K, d) block, as the authors' Gaussian.forward / update_sigma


def naive_start_means(x, z, n_confident=8):
    """Per class: the z-weighted average of its n most confident images, L2-normalised."""
    n, k = z.shape
    means = torch.zeros(k, x.shape[1], dtype=x.dtype)
    for c in range(k):
        idx = torch.topk(z[:, c], min(n_confident, n)).indices
        acc = torch.zeros(x.shape[1], dtype=x.dtype)
        for i in idx.tolist():
            acc += z[i, c] * x[i]
        mean = acc / len(idx)
        means[c] = mean / mean.norm()
    return means


def chunked_log_likelihood(x, means, var, chunk=CHUNK):
    """-0.5 sum_d (x_i - mu_k)^2 / var_d for every pair, built from (chunk, K, d) differences."""
    out = torch.empty(x.shape[0], means.shape[0], dtype=x.dtype)
    for start in range(0, x.shape[0], chunk):
        diff = x[start:start + chunk, None, :] - means[None, :, :]  # (c, K, d)
        out[start:start + chunk] = -0.5 * (diff.square() / var).sum(-1)
    return out


def tempered_posteriors(log_lik, temperature):
    """exp((L - max) / T), rows normalised."""
    p = torch.exp((log_lik - log_lik.max(1, keepdim=True).values) / temperature)
    return p / p.sum(1, keepdim=True)


def chunked_variance(x, q, means, chunk=CHUNK):
    """sum_ik q_ik (x_i - mu_k)^2 / sum q, from (chunk, K, d) differences."""
    acc = torch.zeros(x.shape[1], dtype=x.dtype)
    for start in range(0, x.shape[0], chunk):
        diff = x[start:start + chunk, None, :] - means[None, :, :]  # (c, K, d)
        acc += (q[start:start + chunk, :, None] * diff.square()).sum((0, 1))
    return acc / q.sum()


def plain_swav_sinkhorn(s, eps, max_iter, tol):
    """Returns (N * Q, iterations run)."""
    n, k = s.shape
    q = torch.exp((s - s.max(1, keepdim=True).values) / eps)
    q /= q.sum()
    it = 0
    while it < max_iter:
        it += 1
        prev = q.clone()
        q /= q.sum(0, keepdim=True)
        q /= k
        q /= q.sum(1, keepdim=True)
        q /= n
        if (q - prev).abs().max() < tol:
            break
    return q * n, it


def agreement(member_probs, q):
    """Each member's count of images whose argmax agrees with argmax q, floored and normalised."""
    target = q.argmax(1)
    counts = [max(float((p.argmax(1) == target).sum()), 1e-8) for p in member_probs]
    return [c / sum(counts) for c in counts]


def reference_official(visual, ys, *, eps=0.01, n_iter=10, sinkhorn_iter=15, sinkhorn_tol=1e-5,
                       temperature=50.0, n_confident=8, adaptive=True, chunk=CHUNK):
    """The official recipe, transductive. Returns a dict: probs (N * Q of the last iteration),
    means, var (after the last M-step), alpha / beta histories (used in each iteration), final
    alpha / beta, Sinkhorn iteration counts, posteriors of the last iteration."""
    xs = [x / x.norm(dim=1, keepdim=True) for x in visual]
    ys = [y / y.sum(1, keepdim=True) for y in ys]
    z0 = sum(ys) / len(ys)
    means = [naive_start_means(x, z0, n_confident) for x in xs]
    var = [torch.full((x.shape[1],), 1.0 / x.shape[1], dtype=x.dtype) for x in xs]
    alpha = [1.0 / len(xs)] * len(xs) if xs else []
    beta = [1.0 / len(ys)] * len(ys)
    out = {"alpha": [], "beta": [], "sinkhorn_iter": []}
    q = None
    for _ in range(n_iter):
        posts = [tempered_posteriors(chunked_log_likelihood(x, mu, v, chunk), temperature)
                 for x, mu, v in zip(xs, means, var)]
        s = torch.zeros_like(ys[0])
        for a, p in zip(alpha, posts):
            s += a * p
        for b, y in zip(beta, ys):
            s += b * y
        q, its = plain_swav_sinkhorn(s, eps, sinkhorn_iter, sinkhorn_tol)
        out["alpha"].append(tuple(alpha))
        out["beta"].append(tuple(beta))
        out["sinkhorn_iter"].append(its)
        if adaptive and len(posts) > 1:
            alpha = agreement(posts, q)
        if adaptive and len(ys) > 1:
            beta = agreement(ys, q)
        for i, x in enumerate(xs):
            mu = (q.T @ x) / q.sum(0)[:, None]  # weighted means
            means[i] = mu / mu.norm(dim=1, keepdim=True)
            var[i] = chunked_variance(x, q, means[i], chunk)  # about the new, normalised means
        out["posteriors"] = posts
    out.update(probs=q, means=means, var=var, final_alpha=tuple(alpha), final_beta=tuple(beta))
    return out
