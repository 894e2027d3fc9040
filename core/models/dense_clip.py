"""Dense CLIP features by MaskCLIP: the value path of the last attention block, in the joint space.

MaskCLIP (Zhou, Loy and Dai, "Extract Free Dense Labels from CLIP", ECCV 2022) observes that the
query-key attention of CLIP's last block mixes every patch with the global context, while its value
embeddings stay local. For an open_clip ``VisionTransformer`` with blocks B_1..B_L:

    x   = ln_pre(patch_embed(image) + pos)          # (B, 1 + h*w, width), class token first
    x   = B_{L-1}(...B_1(x))                         # every block but the last, unchanged
    v   = ln_1(x) W_v^T + b_v                        # value projection of the last block
    y   = ls_1(out_proj(v))                          # its output projection (q and k skipped)
    out = ln_post(y[:, 1:]) @ proj                   # (B, h*w, d_joint), the CLIP image space

The last block's residual connection and MLP are not used (the common MaskCLIP implementation).
Equivalently: the last attention block with each token attending only to itself, without residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def supports_dense(visual: nn.Module) -> bool:
    """True when ``visual`` is an open_clip ViT with a class token and standard attention blocks."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        return False
    last = visual.transformer.resblocks[-1]
    return (
        isinstance(last, ResidualAttentionBlock)
        and isinstance(last.attn, nn.MultiheadAttention)
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
    )


def maskclip_dense(visual: nn.Module, pixels: Tensor) -> Tensor:
    """MaskCLIP dense features of an open_clip ``VisionTransformer``.

    Parameters
    ----------
    visual : open_clip.transformer.VisionTransformer
        The image tower (``model.visual``), in eval mode.
    pixels : Tensor, shape (B, 3, H, W)
        Normalised images at the tower's input size.

    Returns
    -------
    Tensor, shape (B, H // patch, W // patch, d_joint)
        Per-patch features in CLIP's joint image-text space, not normalised.
    """
    if not supports_dense(visual):
        raise ValueError(
            f"dense CLIP features need an open_clip VisionTransformer with a class token, got "
            f"{type(visual).__name__}; pick a ViT CLIP (a ResNet or attention-pooled tower has "
            "no MaskCLIP path)."
        )
    batch, _, height, width = pixels.shape
    grid_h, grid_w = height // visual.patch_size[0], width // visual.patch_size[1]
    dtype = visual.conv1.weight.dtype

    x = visual.conv1(pixels.to(dtype))  # (B, width, gh, gw)
    x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, width)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1+gh*gw, width)
    x = visual.ln_pre(x)

    transformer = visual.transformer
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)  # (L, B, width)
    for block in transformer.resblocks[:-1]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)  # (B, L, width)

    last = transformer.resblocks[-1]
    attn: nn.MultiheadAttention = last.attn
    dim = attn.embed_dim
    if attn.in_proj_weight is not None:
        w_v = attn.in_proj_weight[2 * dim:]  # (width, width), rows of q, k, v stacked
    else:
        w_v = attn.v_proj_weight
    b_v = attn.in_proj_bias[2 * dim:] if attn.in_proj_bias is not None else None
    v = F.linear(last.ln_1(x), w_v, b_v)  # (B, L, width)
    y = last.ls_1(attn.out_proj(v))  # (B, L, width)

    y = visual.ln_post(y[:, 1:])  # (B, gh*gw, width), patches only
    if visual.proj is not None:
        y = y @ visual.proj  # (B, gh*gw, d_joint)
    return y.reshape(batch, grid_h, grid_w, -1)
