"""The MAE on a real CT crop: anisotropic crop, air patches of constant value, a few training steps."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from mixpretrain.models import build_mae


def test_mae_trains_on_real_ct_crop(real_data_dir):
    vol = np.asarray(nib.load(real_data_dir / "ct" / "totalseg_aorta_ct_cropped.nii.gz").dataobj, dtype=np.float32)
    assert vol.shape == (120, 126, 164)
    # HU window to [0, 1]; a corner crop keeps air, whose patches are constant after clipping.
    hu = np.clip(vol, -1000.0, 1000.0)
    crop = np.stack([hu[:32, :48, :16], hu[40:72, 40:88, 70:86]])
    x = torch.from_numpy((crop + 1000.0) / 2000.0)[:, None].contiguous()  # [2, 1, 32, 48, 16]
    torch.manual_seed(0)
    model = build_mae("custom", img_size=(32, 48, 16), patch_size=8, width=32, depth=2, heads=2,
                      decoder_width=32, decoder_depth=1, decoder_heads=2)
    noise = model.make_noise(2, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = model(x, noise=noise)
        assert torch.isfinite(out.loss).all()
        losses.append(float(out.loss.detach().mean()))
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses  # it learns (fixed masks)
    assert torch.allclose(model.unpatchify(model.patchify(x)), x)
