"""The physical scale task images reach the encoder at, next to the pretraining spacing the export
records: reported, with a note when more than 2x off (eval resizes whole images)."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from mixpretrain.eval.common import SCALE_WARN_FACTOR, scale_report, voxel_mm_after_resize
from mixpretrain.eval.phantom_tasks import write_phantom_tasks


def test_voxel_size_after_the_whole_image_resize() -> None:
    image = MetaTensor(torch.zeros(1, 100, 100, 20), affine=torch.diag(torch.tensor([0.5, 0.5, 2.0, 1.0], dtype=torch.float64)))
    assert voxel_mm_after_resize(image, (32, 32, 32)) == [1.562, 1.562, 1.25]


def test_note_only_when_far_from_every_pretraining_spacing() -> None:
    vols = [{"voxel_mm": [8.0, 8.0, 6.0]}, {"voxel_mm": [7.0, 7.0, 5.0]}, {"voxel_mm": [9.0, 9.0, 7.0]}]
    far = scale_report(vols, {"preprocessing": {"ct": {"spacing": [1.5, 1.5, 1.5]}, "mri": {"spacing": [1.0, 1.0, 1.0]}}})
    assert far["voxel_mm_median"] == [8.0, 8.0, 6.0] and far["voxel_mm_min"] == [7.0, 7.0, 5.0]
    assert f"more than {SCALE_WARN_FACTOR:g}x off the nearest pretraining spacing (ct: 1.5x1.5x1.5 mm)" in far["note"]
    near = scale_report(vols, {"preprocessing": {"pet": {"spacing": [4.0, 4.0, 4.0]}}})
    assert "note" not in near and near["pretraining_spacing_mm"] == {"pet": [4.0, 4.0, 4.0]}
    unknown = scale_report(vols, {})  # an export without recorded preprocessing: nothing to compare
    assert "note" not in unknown and unknown["pretraining_spacing_mm"] == {}


def test_phantom_tasks_match_the_phantom_pretraining_scale(tmp_path) -> None:
    """Phantom tasks and phantom shards share a ~32 cm field of view: a 32-voxel task resized to a
    32-voxel encoder pretrained on the cpu_tiny phantoms (size 40: 8 mm) gets no note."""
    from mixpretrain.eval.common import load_volumes
    from mixpretrain.eval.segment import read_decathlon

    write_phantom_tasks(tmp_path, cases=4, size=32, seed=0)
    train, val, _ = read_decathlon(tmp_path)
    vols = load_volumes(train + val, (32, 32, 32))
    report = scale_report(vols, {"preprocessing": {"ct": {"spacing": [8.0, 8.0, 8.0], "phantom": True}}})
    np.testing.assert_allclose(report["voxel_mm_median"], [10.0, 10.0, 10.0])
    assert "note" not in report
