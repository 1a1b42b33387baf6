"""Analytic FLOP counts for MFU reporting.

Counting rules (the usual "model FLOPs" convention):
- only matrix multiplies count, 2 FLOPs per multiply-accumulate: linear layers (patch embedding,
  q/k/v, attention output, MLP, decoder embedding, prediction head) and the two attention
  products (Q K^T and A V, 2*T^2*width each per layer);
- layer norms, softmax, GELU, residual adds, masking gathers and the loss are not counted
  (they are a few percent and memory bound);
- forward + backward = 3 x forward (the backward pass costs two matmuls per forward matmul);
- activation checkpointing re-runs the forward, but those recomputed FLOPs are not counted,
  so MFU stays comparable with and without it.
"""

from __future__ import annotations

import math


def transformer_forward_flops(tokens: int, width: int, depth: int, mlp_hidden: int) -> int:
    """Forward matmul FLOPs of ``depth`` pre-norm ViT blocks over ``tokens`` tokens (per sample)."""
    t, w = tokens, width
    per_layer = 2 * t * w * 3 * w + 2 * t * t * w * 2 + 2 * t * w * w + 2 * t * w * mlp_hidden * 2
    return depth * per_layer


def mae_forward_flops(
    *,
    num_patches: int,
    visible: int,
    patch_dim: int,
    width: int,
    depth: int,
    mlp_hidden: int,
    decoder_width: int,
    decoder_depth: int,
    decoder_mlp_hidden: int,
    embed_tokens: int | None = None,
    extra_tokens: int = 0,
) -> int:
    """Forward matmul FLOPs per sample of an MAE.

    ``embed_tokens``: tokens that go through the patch embedding (ours: the visible ones only;
    MONAI's MaskedAutoEncoderViT embeds all ``num_patches``). ``extra_tokens``: class tokens
    carried through encoder and decoder (MONAI: 1, ours: 0).
    """
    embed_tokens = visible if embed_tokens is None else embed_tokens
    enc_t, dec_t = visible + extra_tokens, num_patches + extra_tokens
    return (
        2 * embed_tokens * patch_dim * width
        + transformer_forward_flops(enc_t, width, depth, mlp_hidden)
        + 2 * enc_t * width * decoder_width
        + transformer_forward_flops(dec_t, decoder_width, decoder_depth, decoder_mlp_hidden)
        + 2 * dec_t * decoder_width * patch_dim
    )


def train_flops(forward_flops: int) -> int:
    """Forward + backward FLOPs from forward FLOPs (3x; see module docstring)."""
    return 3 * forward_flops


def n_masked(num_patches: int, mask_ratio: float) -> int:
    """Masked tokens per sample: round(N * ratio), half away from zero; at least 1 kept and 1 masked."""
    if not 0.0 < mask_ratio < 1.0 or math.isnan(mask_ratio):
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    masked = int(math.floor(num_patches * mask_ratio + 0.5))
    if not 1 <= masked <= num_patches - 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} over {num_patches} patches masks {masked}; "
            "need at least one masked and one visible patch per sample"
        )
    return masked
