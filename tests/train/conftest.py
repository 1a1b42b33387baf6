"""Fixtures for the trainer tests: small phantom shards and a tiny run config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DOMAINS = ("ct", "mri", "pet")


@pytest.fixture(scope="session")
def phantom_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mixpretrain.data.synth import write_phantom_shards

    out = tmp_path_factory.mktemp("train_shards") / "shards"
    write_phantom_shards(out, list(DOMAINS), cases=10, size=24)
    return out


def tiny_config(path: Path, shards: Path, output_dir: Path, **sections: dict) -> Path:
    """Write a YAML run config for a tiny MAE (2+1 layers, width 32) on 16^3 crops, patch 8."""
    cfg = {
        "output_dir": str(output_dir),
        "data": {"shards": str(shards), "crop_size": 16, "crops_per_volume": 2, "num_workers": 1,
                 "prefetch_factor": 2, "shuffle_buffer": 4, "val_crops_per_domain": 2},
        "model": {"preset": "tiny", "patch_size": 8,
                  "overrides": {"width": 32, "depth": 2, "heads": 2, "decoder_width": 32, "decoder_depth": 1,
                                "decoder_heads": 2}},
        "sampler": {"name": "transfer", "update_every": 2},
        "train": {"max_steps": 12, "micro_batch_size": 4, "lr": 2.0e-3, "warmup_steps": 2, "checkpoint_every": 6,
                  "eval_every": 4},
        "logging": {"wandb": False, "progress_bar": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path
