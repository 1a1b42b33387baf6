"""Correctness of the ViT-3D MAE: geometry, masking, per-sample loss, training, precision."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mixpretrain.models import MAE3D, MAEOutput, build_mae, n_masked, patchify, sincos_3d, unpatchify

# Small enough for 2 shared cores; head dim 16 keeps SDPA on its fused paths.
TINY = dict(width=32, depth=2, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2)


def tiny_mae(img_size=(32, 16, 24), patch_size=8, **kw) -> MAE3D:
    torch.manual_seed(0)
    return build_mae("custom", img_size=img_size, patch_size=patch_size, **{**TINY, **kw})


@pytest.mark.parametrize(
    "shape,patch", [((2, 1, 32, 16, 24), (8, 8, 8)), ((1, 2, 16, 48, 32), (16, 16, 16)), ((3, 1, 8, 16, 24), (4, 8, 8))]
)
def test_patchify_roundtrip_anisotropic(shape, patch):
    x = torch.randn(shape)
    p = patchify(x, patch)
    grid = tuple(s // q for s, q in zip(shape[2:], patch, strict=True))
    assert p.shape == (shape[0], math.prod(grid), math.prod(patch) * shape[1])
    assert torch.equal(unpatchify(p, patch, grid, shape[1]), x)


def test_token_order_matches_grid_and_position_embedding():
    """A single bright patch at grid (i, j, k) lands on token (i*gh + j)*gw + k, the row whose
    sin-cos embedding encodes (i, j, k): token axes and position axes agree on non-cubic grids."""
    patch, grid = (8, 8, 8), (2, 3, 5)
    x = torch.zeros(1, 1, 16, 24, 40)
    i, j, k = 1, 2, 3
    x[0, 0, i * 8 : (i + 1) * 8, j * 8 : (j + 1) * 8, k * 8 : (k + 1) * 8] = 1.0
    token = patchify(x, patch)[0].sum(dim=1).nonzero().flatten().tolist()
    assert token == [(i * grid[1] + j) * grid[2] + k]
    emb = sincos_3d(grid, 48)  # 16 channels per axis; the 1st cos channel of each axis is cos(coord)
    row = emb[token[0]]
    coords = [round(math.acos(float(row[a * 16 + 8]))) for a in range(3)]
    assert coords == [i, j, k]
    # Position embedding differs along every axis: no two tokens share an embedding.
    assert torch.unique(emb, dim=0).shape[0] == math.prod(grid)


def test_model_patchify_unpatchify_are_inverses():
    m = tiny_mae()
    x = torch.randn(2, 1, 32, 16, 24)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.6, 0.9])
def test_exact_mask_count_per_sample(ratio):
    m = tiny_mae()
    n = m.num_patches  # 4*2*3 = 24
    out = m(torch.randn(5, 1, 32, 16, 24), mask_ratio=ratio)
    assert isinstance(out, MAEOutput)
    expected = int(math.floor(n * ratio + 0.5))
    assert out.mask.shape == (5, n)
    assert out.mask.sum(dim=1).tolist() == [float(expected)] * 5
    assert n_masked(n, ratio) == expected
    assert out.loss.shape == (5,) and out.loss.dtype == torch.float32
    assert out.pred.shape == (5, n, m.patch_dim)


def test_gradient_zero_at_visible_nonzero_at_masked():
    m = tiny_mae()
    out = m(torch.randn(3, 1, 32, 16, 24))
    (g,) = torch.autograd.grad(out.loss.sum(), out.pred)
    visible = out.mask == 0
    assert torch.all(g[visible] == 0)
    assert torch.all(g[~visible].abs().sum(dim=-1) > 0)


def test_loss_of_sample_i_independent_of_sample_j():
    m = tiny_mae()
    x = torch.randn(3, 1, 32, 16, 24, requires_grad=True)
    noise = m.make_noise(3, seed=1)
    out = m(x, noise=noise)
    (gx,) = torch.autograd.grad(out.loss[0], x)
    assert torch.all(gx[1:] == 0) and gx[0].abs().sum() > 0
    x2 = x.detach().clone()
    x2[1:] = torch.randn_like(x2[1:]) * 5
    out2 = m(x2, noise=noise)
    torch.testing.assert_close(out2.loss[0], out.loss[0])
    assert not torch.allclose(out2.loss[1:], out.loss[1:])


@pytest.mark.parametrize("norm_pix", [True, False])
def test_per_sample_loss_matches_slow_reference(norm_pix):
    m = tiny_mae(norm_pix_loss=norm_pix)
    x = torch.randn(2, 1, 32, 16, 24)
    with torch.no_grad():
        out = m(x)
    pd, ph, pw = m.patch_size
    gd, gh, gw = m.grid_size
    for b in range(2):
        total, count = 0.0, 0
        for t in range(m.num_patches):
            if out.mask[b, t] != 1:
                continue
            i, j, k = t // (gh * gw), (t // gw) % gh, t % gw
            vox = x[b, 0, i * pd : (i + 1) * pd, j * ph : (j + 1) * ph, k * pw : (k + 1) * pw].double().flatten()
            if norm_pix:
                mean = vox.sum() / vox.numel()
                var = ((vox - mean) ** 2).sum() / (vox.numel() - 1)
                vox = (vox - mean) / math.sqrt(var + 1e-6)
            total += float(((out.pred[b, t].double() - vox) ** 2).mean())
            count += 1
        assert count == n_masked(m.num_patches, 0.75)
        assert float(out.loss[b]) == pytest.approx(total / count, rel=1e-5)


def test_masks_differ_across_samples_and_reproducible_with_seed():
    m = tiny_mae()
    x = torch.randn(4, 1, 32, 16, 24)
    torch.manual_seed(123)
    a = m(x).mask
    torch.manual_seed(123)
    b = m(x).mask
    assert torch.equal(a, b)
    assert len({tuple(row.tolist()) for row in a}) == 4
    assert not torch.equal(m(x).mask, a)  # the next draw differs
    fixed = m.make_noise(4, seed=7)
    assert torch.equal(m(x, noise=fixed).mask, m(x, noise=fixed).mask)


def test_tiny_model_overfits_one_fixed_batch():
    m = tiny_mae(img_size=(32, 16, 16), width=64, decoder_width=64)
    torch.manual_seed(1)
    x = torch.randn(4, 1, 32, 16, 16)
    noise = m.make_noise(4, seed=0)  # one fixed batch with fixed masks
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for _ in range(200):
        loss = m(x, noise=noise).loss.mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(m(x, noise=noise).loss.mean())
    print(f"overfit: loss {first:.4f} -> {final:.4f}")
    assert final < first / 10, (first, final)


def test_bf16_autocast_runs_on_cpu():
    m = tiny_mae()
    x = torch.randn(2, 1, 32, 16, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.pred.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss).all()
    out.loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_bf16_model_with_fp32_input():
    """DeepSpeed's bf16 mode casts the whole model (buffers included) to bf16 and feeds fp32 crops."""
    m = tiny_mae().to(torch.bfloat16)
    out = m(torch.randn(2, 1, 32, 16, 24))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss).all()
    out.loss.mean().backward()


def test_activation_checkpointing_same_loss_and_grads():
    x = torch.randn(2, 1, 32, 16, 24)
    noise = torch.rand(2, 24)
    ref, ckpt = tiny_mae(), tiny_mae(activation_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    grads = []
    for m in (ref, ckpt):
        m(x, noise=noise).loss.sum().backward()
        grads.append([p.grad for p in m.parameters()])
    torch.testing.assert_close(ref(x, noise=noise).loss, ckpt(x, noise=noise).loss)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_mae_style_init_and_fixed_position_embeddings():
    m = tiny_mae()
    assert torch.all(m.encoder.stack.blocks[0].attn.qkv.bias == 0)
    assert 0.005 < float(m.mask_token.detach().std()) < 0.05
    names = set(m.state_dict())
    assert "encoder.pos_embed" not in names and "decoder_pos_embed" not in names  # fixed, recomputed
    assert all(p.requires_grad for p in m.parameters())


def test_flops_match_torch_flop_counter():
    """Analytic forward FLOPs equal torch's counter (math SDPA so attention is counted); the training
    count is 3x forward (the counter is lower only by the input-gradient of the first layer)."""
    m = tiny_mae()
    x = torch.randn(2, 1, 32, 16, 24)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(x)
    assert fc.get_total_flops() == 2 * m.forward_flops()
    assert m.flops_per_sample() == 3 * m.forward_flops()
    with torch.device("meta"):  # no memory, no init cost: only the FLOP count is needed
        base = build_mae("base", img_size=128, patch_size=16)
    assert 90e9 < base.flops_per_sample() < 120e9  # ~100 GFLOP per 128^3 sample


def test_config_is_plain_and_rebuilds():
    m = tiny_mae()
    cfg = m.config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert (cfg["img_size"], cfg["patch_size"], cfg["decoder_depth"]) == ([32, 16, 24], [8, 8, 8], 1)


def test_presets_build():
    for preset, (w, d) in {"tiny": (192, 12), "small": (384, 12)}.items():
        m = build_mae(preset, img_size=(32, 32, 16), patch_size=16)
        assert (m.encoder.width, m.encoder.depth) == (w, d)
        assert m.grid_size == (2, 2, 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(img_size=(32, 30, 32)), "axis H has size 30"),
        (dict(img_size=(32, 32, 20), patch_size=16), "axis W has size 20"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=0.0), "mask_ratio"),
        (dict(heads=3), "multiple of heads"),
        (dict(decoder_depth=0), "decoder: depth must be positive"),
        (dict(img_size=(16, 16, 8), mask_ratio=0.9), "at least one"),
    ],
)
def test_bad_build_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_mae(**kwargs)


def test_bad_preset_and_override():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_mae("huge", img_size=32)
    with pytest.raises(ValueError, match="widht"):
        build_mae("tiny", img_size=32, widht=64)
    with pytest.raises(ValueError, match="needs explicit depth, heads"):
        build_mae("custom", img_size=32, width=64)


def test_bad_forward_inputs():
    m = tiny_mae()
    with pytest.raises(ValueError, match="axis D has size 16"):
        m(torch.randn(1, 1, 16, 16, 24))
    with pytest.raises(ValueError, match="2 channels"):
        m(torch.randn(1, 2, 32, 16, 24))
    with pytest.raises(ValueError, match=r"\[B, 1, D, H, W\]"):
        m(torch.randn(32, 16, 24))
    with pytest.raises(ValueError, match="noise: expected shape"):
        m(torch.randn(2, 1, 32, 16, 24), noise=torch.rand(2, 23))


@pytest.mark.parametrize(("width", "enc_heads", "decoder_width", "heads"), [
    (448, 7, None, 2), (400, 5, None, 2), (768, 12, None, 6), (64, 1, None, 1), (768, 12, 512, 8), (128, 2, 256, 4)])
def test_custom_decoder_heads_default_divides_its_width(width, enc_heads, decoder_width, heads):
    """The custom preset's default decoder heads divide the decoder width, the given one included
    (224 // 64 = 3 heads did not divide 224)."""
    extra = {} if decoder_width is None else {"decoder_width": decoder_width}
    m = build_mae("custom", img_size=16, patch_size=8, width=width, depth=1, heads=enc_heads,
                  decoder_depth=1, **extra)
    assert m.decoder_heads == heads and m.decoder_width % m.decoder_heads == 0


def test_norm_pix_loss_with_one_value_per_patch_is_refused():
    with pytest.raises(ValueError, match="norm_pix_loss needs at least 2 values per patch"):
        build_mae("custom", img_size=4, patch_size=1, width=32, depth=1, heads=2)
    m = build_mae("custom", img_size=4, patch_size=1, width=32, depth=1, heads=2, norm_pix_loss=False)
    assert torch.isfinite(m(torch.randn(2, 1, 4, 4, 4)).loss).all()
