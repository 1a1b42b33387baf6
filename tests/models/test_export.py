"""Encoder export: one file, no pickle, reloads with identical outputs, other image sizes, bad files."""

from __future__ import annotations

import pytest
import torch

from mixpretrain.models import MAEEncoder, build_mae, load_encoder, read_encoder_file, save_encoder, sincos_3d

TINY = dict(width=32, depth=2, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2)


@pytest.fixture()
def trained_mae():
    torch.manual_seed(0)
    m = build_mae("custom", img_size=(32, 16, 24), patch_size=8, **TINY)
    # One optimiser step so the weights are not just the initialisation.
    m(torch.randn(2, 1, 32, 16, 24)).loss.mean().backward()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    return m.eval()


def test_export_reloads_with_identical_outputs(tmp_path, trained_mae):
    path = save_encoder(trained_mae, tmp_path / "enc.pt", extra_meta={"step": 1, "domains": ["ct", "mr"]})
    enc = load_encoder(path)
    assert isinstance(enc, MAEEncoder)
    x = torch.randn(2, 1, 32, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), trained_mae.encoder(x), rtol=0, atol=0)
        assert enc.forward_pooled(x).shape == (2, 32)
        grid = enc.tokens_to_grid(enc.forward_features(x))
        inter = enc.forward_intermediates(x, [1, 0, 1])
    assert grid.shape == (2, 32, 4, 2, 3)
    assert len(inter) == 3 and inter[0].shape == (2, 24, 32)
    assert torch.equal(inter[0], inter[2]) and not torch.equal(inter[0], inter[1])  # order as asked
    torch.testing.assert_close(enc.stack.norm(inter[0]), enc(x).detach())  # last block + norm = features
    assert enc.export_meta["step"] == 1 and enc.export_meta["domains"] == ["ct", "mr"]
    # The file is plain tensors + metadata: readable with weights_only=True.
    raw = torch.load(path, weights_only=True)
    assert raw["meta"]["img_size"] == [32, 16, 24] and raw["meta"]["pos_embed"] == "sincos3d"
    assert {"width", "depth", "heads", "patch_size", "in_chans"} <= set(raw["meta"])
    assert raw["format_version"] == 1


def test_model_method_and_state_dict(tmp_path, trained_mae):
    path = trained_mae.save_encoder(str(tmp_path / "enc.pt"))
    assert set(read_encoder_file(path)["state_dict"]) == set(trained_mae.encoder_state_dict())


def test_reload_at_other_image_size_recomputes_position_embedding(tmp_path, trained_mae):
    path = save_encoder(trained_mae, tmp_path / "enc.pt")
    enc = load_encoder(path, img_size=(16, 32, 40))
    assert enc.grid_size == (2, 4, 5)
    assert enc.export_meta["img_size"] == [16, 32, 40] and enc.export_meta["num_patches"] == 40
    assert enc.export_meta["saved"]["img_size"] == [32, 16, 24]  # the file's own
    torch.testing.assert_close(enc.pos_embed[0], sincos_3d((2, 4, 5), 32))
    with torch.no_grad():
        assert enc(torch.randn(1, 1, 16, 32, 40)).shape == (1, 40, 32)
    with pytest.raises(ValueError, match="axis W has size 36"):
        load_encoder(path, img_size=(16, 32, 36))


def test_refuses_overwrite_and_bad_files(tmp_path, trained_mae):
    path = save_encoder(trained_mae, tmp_path / "enc.pt")
    with pytest.raises(FileExistsError, match="enc.pt exists"):
        save_encoder(trained_mae, path)
    save_encoder(trained_mae, path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_encoder(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable encoder file"):
        load_encoder(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not a mixpretrain encoder file"):
        load_encoder(other)
    # A file carrying an arbitrary Python object is refused by weights_only loading.
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mixpretrain.encoder", "obj": _Custom()}, evil)
    with pytest.raises(ValueError, match="not a readable encoder file"):
        load_encoder(evil)
    bad_meta = read_encoder_file(path)
    bad_meta["state_dict"].pop(next(iter(bad_meta["state_dict"])))
    torch.save(bad_meta | {"format": "mixpretrain.encoder", "format_version": 1}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="weights do not match"):
        load_encoder(tmp_path / "short.pt")
    with pytest.raises(TypeError, match="expected an MAE3D"):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "lin.pt")


def test_save_through_wrapper(tmp_path, trained_mae):
    class Wrapper(torch.nn.Module):  # the shape of a DDP module / DeepSpeed engine: .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    path = save_encoder(Wrapper(trained_mae), tmp_path / "enc.pt")
    assert load_encoder(path).config() == trained_mae.encoder.config()
    compiled = torch.compile(trained_mae)  # wraps as ._orig_mod; nothing is compiled until it is called
    path = save_encoder(Wrapper(compiled), tmp_path / "compiled.pt")
    assert load_encoder(path).config() == trained_mae.encoder.config()


class _Custom:
    pass


@pytest.mark.parametrize(("change", "match"), [
    ({"state_dict": None}, "no state_dict mapping"),
    ({"meta": {"heads": 2.0}}, r"\{'heads': 2.0\} should be integers"),
    ({"meta": {"heads": 5}}, "does not describe a buildable encoder: encoder: width 32 must be a positive multiple"),
    ({"meta": {"img_size": "abc"}}, "does not describe a buildable encoder"),
    ({"format_version": 0}, "format_version 0"),
    ({"format_version": True}, "format_version True"),
])
def test_tampered_metadata_is_refused_by_file(tmp_path, trained_mae, change, match):
    """Each error names the file: a damaged export must not load, or fail later without saying which."""
    payload = read_encoder_file(save_encoder(trained_mae, tmp_path / "enc.pt"))
    payload = {"format": "mixpretrain.encoder", "format_version": 1, **payload}
    for key, value in change.items():
        payload[key] = {**payload[key], **value} if key == "meta" else value
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=f"bad.pt.*{match}"):
        load_encoder(tmp_path / "bad.pt")
