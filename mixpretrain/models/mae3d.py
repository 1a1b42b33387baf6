"""ViT-3D masked autoencoder (He et al., 2021) for single- or multi-channel volumes.

Design choices, each for speed or correctness:
- patches are cut by reshape/permute (:mod:`.patches`), masked, and only the visible ones go
  through the linear patch embedding (an MAE embeds 25% of the tokens, not 100%);
- masking is per sample from ``argsort(noise)`` on the model's device: exactly
  ``round(N * ratio)`` patches masked per sample, no host sync, and a caller-given ``noise``
  fixes the mask (fixed-mask validation);
- attention is ``F.scaled_dot_product_attention`` over a fused qkv projection (flash /
  memory-efficient kernels on GPU);
- position embeddings are fixed 3-D sin-cos buffers (not saved, recomputed for any image size);
- the residual stream keeps the dtype of the patch embedding output (bf16 under autocast or
  with a bf16 model); the loss is always computed in float32;
- the loss is one value per sample (mean squared error over masked patches of the per-patch
  normalised target), so the trainer can credit each sample's loss to its domain;
- no class token: downstream tasks use all tokens or their mean.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .flops import mae_forward_flops, n_masked, train_flops
from .patches import Size3, check_input, grid_shape, patchify, to_3tuple, unpatchify
from .posembed import POS_EMBED_KIND, sincos_3d

log = logging.getLogger(__name__)

# Encoder width/depth/heads follow ViT-T/S/B/L; decoders are lighter than the 2-D MAE's
# (volumes have many more tokens) and keep a head dim of 64 for the flash-attention kernels.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=192, depth=12, heads=3, decoder_width=128, decoder_depth=2, decoder_heads=2),
    "small": dict(width=384, depth=12, heads=6, decoder_width=256, decoder_depth=4, decoder_heads=4),
    "base": dict(width=768, depth=12, heads=12, decoder_width=384, decoder_depth=4, decoder_heads=6),
    "large": dict(width=1024, depth=24, heads=16, decoder_width=512, decoder_depth=8, decoder_heads=8),
}
OVERRIDE_KEYS = (
    "width", "depth", "heads", "mlp_ratio", "decoder_width", "decoder_depth", "decoder_heads",
    "decoder_mlp_ratio", "qkv_bias", "norm_eps",
)  # fmt: skip


class MAEOutput(NamedTuple):
    """``loss`` [B] float32, ``pred`` [B, N, patch_voxels*C], ``mask`` [B, N] float32 (1 = masked)."""

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


class LayerNorm(nn.LayerNorm):
    """LayerNorm that returns its input's dtype under autocast.

    Autocast runs layer_norm in float32 and returns float32, so every pre-norm would write a
    float32 copy that the next linear casts back to bf16. The kernel already accumulates its
    statistics in float32 for bf16 inputs, so keeping the output in bf16 loses nothing and
    saves that memory traffic (the residual stream stays bf16 end to end).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype or not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        # [B, T, 3, H, d] -> 3 x [B, H, T, d]; the last dim stays contiguous, as SDPA's kernels need.
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _check_heads(name: str, width: int, heads: int, depth: int) -> None:
    if depth <= 0:
        raise ValueError(f"{name}: depth must be positive, got {depth}")
    if width <= 0 or heads <= 0 or width % heads:
        raise ValueError(f"{name}: width {width} must be a positive multiple of heads {heads}")
    if (width // heads) % 8:
        log.warning("%s: head dim %d is not a multiple of 8; GPU flash attention will not be used",
                    name, width // heads)


class BlockStack(nn.Module):
    """Blocks then a final LayerNorm, with optional per-block activation checkpointing."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, qkv_bias: bool,
                 norm_eps: float, activation_checkpointing: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth))
        self.norm = LayerNorm(dim, eps=norm_eps)
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: torch.Tensor, keep: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the normed output and the raw outputs of the blocks whose indices are in ``keep``."""
        ckpt = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        kept = []
        for i, blk in enumerate(self.blocks):
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
            if i in keep:
                kept.append(x)
        return self.norm(x), kept


def mae_init_(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears (patch embedding included), zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MAEEncoder(nn.Module):
    """The ViT-3D encoder, usable alone by downstream tasks on unmasked volumes.

    ``forward(x)`` / ``forward_features(x)``: [B, C, D, H, W] -> [B, N, width] (final-normed tokens
    in (D, H, W) grid order); ``forward_pooled(x)`` -> [B, width] (token mean);
    ``tokens_to_grid(t)`` -> [B, width, gd, gh, gw]; ``forward_intermediates(x, layers)`` for
    UNETR-style decoders; ``grid_size``, ``num_patches``, ``config()`` (rebuild metadata).
    """

    def __init__(self, img_size: int | Sequence[int], patch_size: int | Sequence[int] = 16, in_chans: int = 1,
                 width: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-6, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.img_size: Size3 = to_3tuple(img_size, "img_size")
        self.patch_size: Size3 = to_3tuple(patch_size, "patch_size")
        self.grid_size: Size3 = grid_shape(self.img_size, self.patch_size)
        if in_chans <= 0:
            raise ValueError(f"in_chans must be positive, got {in_chans}")
        _check_heads("encoder", width, heads, depth)
        self.in_chans, self.width, self.depth, self.heads = in_chans, width, depth, heads
        self.mlp_ratio, self.qkv_bias, self.norm_eps = float(mlp_ratio), bool(qkv_bias), float(norm_eps)
        self.num_patches = math.prod(self.grid_size)
        self.patch_dim = math.prod(self.patch_size) * in_chans
        self.patch_embed = nn.Linear(self.patch_dim, width)
        # Fixed, so not in the state dict: rebuilt from the metadata for any image size.
        self.register_buffer("pos_embed", sincos_3d(self.grid_size, width)[None], persistent=False)
        self.stack = BlockStack(width, depth, heads, mlp_ratio, qkv_bias, norm_eps, activation_checkpointing)
        mae_init_(self)

    def config(self) -> dict[str, Any]:
        """Plain metadata that rebuilds this encoder (see :mod:`.export`)."""
        return dict(
            img_size=list(self.img_size), patch_size=list(self.patch_size), in_chans=self.in_chans,
            width=self.width, depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias, norm_eps=self.norm_eps, pos_embed=POS_EMBED_KIND,
            grid_size=list(self.grid_size), num_patches=self.num_patches,
        )

    def embed(self, patches: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Patch vectors [B, T, patch_dim] (at grid positions ``ids`` [B, T], or all N) -> tokens."""
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        pos = self.pos_embed.to(x.dtype)
        if ids is None:
            return x + pos
        pos = pos.expand(x.shape[0], -1, -1)
        return x + torch.gather(pos, 1, ids[..., None].expand(-1, -1, x.shape[-1]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.img_size, "MAEEncoder")
        return self.stack(self.embed(patchify(x, self.patch_size)))[0]

    forward = forward_features

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=1)

    def forward_intermediates(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Raw outputs [B, N, width] of the blocks with 0-based indices ``layers``, in the order asked."""
        bad = [i for i in layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"forward_intermediates: layers {bad} out of range 0..{self.depth - 1}")
        check_input(x, self.in_chans, self.img_size, "MAEEncoder")
        wanted = sorted(set(layers))
        kept = self.stack(self.embed(patchify(x, self.patch_size)), keep=wanted)[1]
        by_layer = dict(zip(wanted, kept, strict=True))
        return [by_layer[i] for i in layers]

    def tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, width] -> [B, width, gd, gh, gw] (a feature map for convolutional heads)."""
        b = tokens.shape[0]
        return tokens.transpose(1, 2).reshape(b, tokens.shape[-1], *self.grid_size)


class MAE3D(nn.Module):
    """Masked autoencoder: :class:`MAEEncoder` over visible tokens + a light transformer decoder."""

    def __init__(self, img_size: int | Sequence[int], patch_size: int | Sequence[int] = 16, in_chans: int = 1,
                 width: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 decoder_width: int = 384, decoder_depth: int = 4, decoder_heads: int = 6,
                 decoder_mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.encoder = MAEEncoder(img_size, patch_size, in_chans, width, depth, heads, mlp_ratio, qkv_bias,
                                  norm_eps, activation_checkpointing)
        _check_heads("decoder", decoder_width, decoder_heads, decoder_depth)
        n_masked(self.encoder.num_patches, mask_ratio)  # validates the ratio for this grid
        if norm_pix_loss and self.patch_dim < 2:
            # One value per patch has no variance: every per-patch normalised target would be NaN.
            raise ValueError(f"norm_pix_loss needs at least 2 values per patch; patch_size {self.patch_size} x "
                             f"{in_chans} channel(s) gives {self.patch_dim}: use a larger patch or norm_pix_loss false")
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self.decoder_width, self.decoder_depth = decoder_width, decoder_depth
        self.decoder_heads, self.decoder_mlp_ratio = decoder_heads, float(decoder_mlp_ratio)
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.register_buffer("decoder_pos_embed", sincos_3d(self.grid_size, decoder_width)[None],
                             persistent=False)
        self.decoder = BlockStack(decoder_width, decoder_depth, decoder_heads, decoder_mlp_ratio, qkv_bias,
                                  norm_eps, activation_checkpointing)
        self.decoder_pred = nn.Linear(decoder_width, self.patch_dim)
        for part in (self.decoder_embed, self.decoder, self.decoder_pred):  # the encoder inits itself
            mae_init_(part)
        nn.init.normal_(self.mask_token, std=0.02)

    # Geometry, read through from the encoder.
    img_size = property(lambda self: self.encoder.img_size)
    patch_size = property(lambda self: self.encoder.patch_size)
    grid_size = property(lambda self: self.encoder.grid_size)
    num_patches = property(lambda self: self.encoder.num_patches)
    patch_dim = property(lambda self: self.encoder.patch_dim)
    in_chans = property(lambda self: self.encoder.in_chans)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.patch_size)

    def unpatchify(self, p: torch.Tensor) -> torch.Tensor:
        return unpatchify(p, self.patch_size, self.grid_size, self.in_chans)

    def config(self) -> dict[str, Any]:
        """Plain, JSON-able description of the whole model (encoder metadata + decoder + loss)."""
        return dict(self.encoder.config(), decoder_width=self.decoder_width, decoder_depth=self.decoder_depth,
                    decoder_heads=self.decoder_heads, decoder_mlp_ratio=self.decoder_mlp_ratio,
                    mask_ratio=self.mask_ratio, norm_pix_loss=self.norm_pix_loss)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.encoder.stack.activation_checkpointing = enabled
        self.decoder.activation_checkpointing = enabled

    def make_noise(self, batch_size: int, seed: int) -> torch.Tensor:
        """Seeded [B, N] noise on the model's device: pass it as ``noise`` for fixed validation masks."""
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, self.num_patches, generator=g).to(self.mask_token.device)

    def random_masking(self, batch_size: int, mask_ratio: float | None = None,
                       noise: torch.Tensor | None = None,
                       device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample masks: (ids_keep [B, n_keep], ids_restore [B, N], mask [B, N] float, 1 = masked).

        The lowest ``N - round(N*ratio)`` noise values of each row are kept. All on ``device``;
        the count comes from shapes, so nothing waits for the device.
        """
        n = self.num_patches
        n_keep = n - n_masked(n, self.mask_ratio if mask_ratio is None else mask_ratio)
        device = self.mask_token.device if device is None else device
        if noise is None:
            noise = torch.rand(batch_size, n, device=device)
        elif tuple(noise.shape) != (batch_size, n):
            raise ValueError(f"noise: expected shape [{batch_size}, {n}] (batch, patches), got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise.to(device), dim=1)
        ids_restore = torch.empty_like(ids_shuffle).scatter_(
            1, ids_shuffle, torch.arange(n, device=device).expand(batch_size, -1))
        mask = torch.ones(batch_size, n, device=device)
        mask[:, :n_keep] = 0.0
        return ids_shuffle[:, :n_keep], ids_restore, torch.gather(mask, 1, ids_restore)

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None) -> MAEOutput:
        check_input(x, self.in_chans, self.img_size, "MAE3D")
        b = x.shape[0]
        patches = self.patchify(x)
        ids_keep, ids_restore, mask = self.random_masking(b, mask_ratio, noise, x.device)
        visible = torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, self.patch_dim))
        latent = self.encoder.stack(self.encoder.embed(visible, ids_keep))[0]
        pred = self.decode(latent, ids_restore)
        return MAEOutput(masked_patch_loss(pred, patches, mask, self.norm_pix_loss), pred, mask)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible latents [B, n_keep, width] -> predictions [B, N, patch_dim] in grid order."""
        y = self.decoder_embed(latent)
        b, n_keep, dim = y.shape
        fill = self.mask_token.to(y.dtype).expand(b, self.num_patches - n_keep, -1)
        y = torch.gather(torch.cat([y, fill], dim=1), 1, ids_restore[..., None].expand(-1, -1, dim))
        y = self.decoder(y + self.decoder_pos_embed.to(y.dtype))[0]
        return self.decoder_pred(y)

    def forward_flops(self, mask_ratio: float | None = None) -> int:
        n = self.num_patches
        e = self.encoder
        return mae_forward_flops(
            num_patches=n, visible=n - n_masked(n, self.mask_ratio if mask_ratio is None else mask_ratio),
            patch_dim=self.patch_dim, width=e.width, depth=e.depth, mlp_hidden=int(e.width * e.mlp_ratio),
            decoder_width=self.decoder_width, decoder_depth=self.decoder_depth,
            decoder_mlp_hidden=int(self.decoder_width * self.decoder_mlp_ratio),
        )

    def flops_per_sample(self, mask_ratio: float | None = None) -> int:
        """Analytic forward+backward matmul FLOPs per sample (3x forward; see :mod:`.flops`)."""
        return train_flops(self.forward_flops(mask_ratio))

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return self.encoder.state_dict()

    def save_encoder(self, path: str, *, overwrite: bool = False, extra_meta: dict | None = None) -> Any:
        from .export import save_encoder

        return save_encoder(self, path, overwrite=overwrite, extra_meta=extra_meta)


def masked_patch_loss(pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor,
                      norm_pix_loss: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample loss [B] in float32: mean over masked patches of the per-patch mean squared error.

    With ``norm_pix_loss`` each target patch is standardised by its own mean and (unbiased)
    variance, as in the original MAE. The target is data (no gradient flows into it). Visible
    patches get exactly zero gradient. Written for few passes over the [B, N, P] tensors, which
    are the largest in a step: one var_mean, one fused normalise, a subtraction that promotes a
    bf16 ``pred`` to float32 on the fly, and a single-pass norm reduction.
    """
    with torch.no_grad():
        target = patches.float()
        if norm_pix_loss:
            var, mean = torch.var_mean(target, dim=-1, keepdim=True)
            target = (target - mean) * torch.rsqrt(var + eps)
    diff = pred - target
    err = torch.linalg.vector_norm(diff, dim=-1).square() / diff.shape[-1]  # [B, N] mean squared error
    mask = mask.float()
    return (err * mask).sum(dim=1) / mask.sum(dim=1)


def default_heads(width: int) -> int:
    """The most attention heads of dim >= 64 that divide ``width`` (1 if none): the custom decoder's
    default. Plain ``width // 64`` need not divide the width (224 // 64 = 3)."""
    if not isinstance(width, int) or width <= 0:
        return 1  # the width check of the block stack names the bad value
    return max((h for h in range(1, max(width // 64, 1) + 1) if width % h == 0), default=1)


def build_mae(preset: str | None = "base", img_size: int | Sequence[int] = 96, patch_size: int | Sequence[int] = 16,
              in_chans: int = 1, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
              activation_checkpointing: bool = False, **overrides: Any) -> MAE3D:
    """A :class:`MAE3D` from a preset (tiny, small, base, large) with optional size overrides.

    ``preset=None`` (or "custom") builds from the overrides alone: width, depth and heads are
    then required; the decoder defaults to half the width (or ``decoder_width``), 4 layers, and the
    most heads of dim >= 64 that divide its width (``default_heads``).
    """
    bad = [k for k in overrides if k not in OVERRIDE_KEYS]
    if bad:
        hints = {k: difflib.get_close_matches(k, OVERRIDE_KEYS, n=2) for k in bad}
        raise ValueError(f"build_mae: unknown override(s) {hints} (valid: {', '.join(OVERRIDE_KEYS)})")
    if preset in (None, "custom"):
        missing = [k for k in ("width", "depth", "heads") if k not in overrides]
        if missing:
            raise ValueError(f"build_mae: preset 'custom' needs explicit {', '.join(missing)}")
        dw = overrides.get("decoder_width", max(overrides["width"] // 2, 8))
        size = dict(decoder_width=dw, decoder_depth=4, decoder_heads=default_heads(dw))
    elif preset in PRESETS:
        size = dict(PRESETS[preset])
    else:
        raise ValueError(f"build_mae: unknown preset {preset!r} (valid: {', '.join(PRESETS)}, custom)")
    size.update(overrides)
    return MAE3D(img_size=img_size, patch_size=patch_size, in_chans=in_chans, mask_ratio=mask_ratio,
                 norm_pix_loss=norm_pix_loss, activation_checkpointing=activation_checkpointing, **size)
