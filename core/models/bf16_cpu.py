"""Precision "bf16" on a CPU: autocast as on CUDA, over a twin whose matmul weights are bf16.

Plain ``torch.autocast("cpu", torch.bfloat16)`` over the fp32 model is fast for DINOv2 but slower
than fp32 for open_clip's CLIP (profiled on the real-size ViT-B/16, benchmarks/README.md): autocast
switches off ``nn.MultiheadAttention``'s fast path, and its slow path transposes the batch-first
input, so the in-projection ``F.linear`` gets a non-contiguous 3-D bf16 tensor and runs as a
``bmm`` with a copy of the weight per sequence position (``aten::copy_`` was 7.2 s of 9.5 s).
The twin built here fixes that and the per-call weight casts:

- every ``nn.Linear`` and convolution holds bf16 weights (autocast would cast them on every call:
  its weight cache only serves tensors that require grad), so under autocast they run as is;
- every ``nn.MultiheadAttention`` holds bf16 weights and runs *outside* autocast (`Bf16Attention`):
  its inputs are cast to bf16 once and a 0 / -inf float mask (CLIP's causal text mask) becomes
  the equal boolean one, so the native fast path applies (it refuses float masks);
- everything else (LayerNorm, softmax, GELU, residual sums, the final projection parameter) stays
  as autocast decides, as on CUDA: the residual stream stays float32.

The fp32 model is never modified (the twin is a deep copy). ``Encoder`` runs the twin under
autocast and returns float32 features, as for every precision.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["Bf16Attention", "bf16_twin"]

_WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


class Bf16Attention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with bf16 weights that runs outside autocast (its fast path).

    Same call as ``nn.MultiheadAttention.forward``; query / key / value (B, L, E) or (L, B, E)
    are cast to the weights' dtype, a float ``attn_mask`` (L, L) to a boolean one when it holds
    only 0 and -inf (else to the weights' dtype), keeping ``query is key is value``
    (the fast path needs it for self-attention). Outputs are in the weights' dtype.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *args, attn_mask=None,
                **kwargs):
        dtype = self.out_proj.weight.dtype
        with torch.autocast(query.device.type, enabled=False):
            q = query.to(dtype)
            k = q if key is query else key.to(dtype)
            v = k if value is key else (q if value is query else value.to(dtype))
            if attn_mask is not None and attn_mask.is_floating_point():
                # The fast path refuses float masks; a 0 / -inf one (CLIP's causal text mask)
                # is the same as a boolean one (True: may not attend).
                blocked = torch.isneginf(attn_mask)
                exact = bool(((attn_mask == 0) | blocked).all())
                attn_mask = blocked if exact else attn_mask.to(dtype)
            return super().forward(q, k, v, *args, attn_mask=attn_mask, **kwargs)


def bf16_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` for bf16 autocast on a CPU (see the module docstring).

    Linear, convolution and multi-head attention modules get bf16 parameters; every
    ``nn.MultiheadAttention`` (exact type) becomes a `Bf16Attention`. Normalisation layers,
    embeddings and bare parameters stay float32. ``model`` itself is left untouched.
    """
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, _WEIGHT_MODULES):
            module.to(torch.bfloat16)  # in place, its own parameters and submodules
        if type(module) is nn.MultiheadAttention:
            module.__class__ = Bf16Attention  # same state, forward outside autocast
    return twin
