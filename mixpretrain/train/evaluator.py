"""Per-domain validation loss on fixed crops with fixed masks.

The validation set is drawn once at start: the first ``data.val_crops_per_domain`` crops of each
domain's ``val`` split (or, for a domain without one, its ``train`` split: counted and logged),
with a fixed seed, and a fixed mask noise per crop. Every evaluation therefore measures the same
crops under the same masks, so differences between evaluations are the model's alone - the
sampler fits laws to these numbers.

Every rank loads the same crops (a few MB) and evaluates the slice ``rank::world``; (sum, count)
per domain are all-reduced, so the result does not depend on the number of ranks.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mixpretrain.config import RunConfig
from mixpretrain.data.mixture import derive_seed
from mixpretrain.train.dist import all_reduce_sum

log = logging.getLogger(__name__)


def _stream_crops(cfg: RunConfig, domain: str, split: str, n: int, seed: int) -> list[torch.Tensor]:
    from mixpretrain.data.stream import DomainStream

    stream = DomainStream(
        cfg.data.shards, domain, split=split, crop_size=tuple(cfg.data.crop_size),
        crops_per_volume=cfg.data.crops_per_volume, seed=seed, resampled=False, strict=cfg.data.strict,
        # Every rank reads every val shard in file order, so the fixed set is the same on all ranks.
        rank=0, world_size=1, shuffle_buffer=0, crop_shuffle=0,
    )
    crops = []
    for sample in stream:
        crops.append(sample["image"])
        if len(crops) >= n:
            break
    return crops


def load_val_crops(cfg: RunConfig, domains: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{domain: [n, 1, D, H, W]} fixed validation crops, identical on every rank."""
    from mixpretrain.data.shards import load_index

    index = load_index(cfg.data.shards)["domains"]
    out: dict[str, torch.Tensor] = {}
    n = cfg.data.val_crops_per_domain
    for d in domains:
        has_val = index[d].get("splits", {}).get("val", {}).get("samples", 0) > 0
        split = "val" if has_val else "train"
        if not has_val:
            log.warning("domain %s has no val split: validating on fixed crops of its train split", d)
        crops = _stream_crops(cfg, d, split, n, derive_seed(cfg.train.seed, "val", d))
        if not crops:
            raise ValueError(f"domain {d}: no validation crops could be read from {cfg.data.shards} ({split} split)")
        if len(crops) < n:
            log.warning("domain %s: only %d of %d validation crops available", d, len(crops), n)
        out[d] = torch.stack(crops)
    return out


class Evaluator:
    def __init__(self, crops: dict[str, torch.Tensor], num_patches: int, seed: int, rank: int, world: int,
                 batch_size: int) -> None:
        self.crops = crops
        self.rank, self.world, self.batch_size = rank, world, batch_size
        # One fixed mask noise per crop; masking keeps the lowest-noise patches.
        self.noise = {
            d: torch.rand(len(x), num_patches, generator=torch.Generator().manual_seed(derive_seed(seed, "mask", d)))
            for d, x in crops.items()
        }

    def _slice(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's crop indices, padded so every rank runs the same number of forwards
        (ZeRO-3 gathers parameters collectively in each forward); padding has weight 0."""
        idx = torch.arange(self.rank, n, self.world)
        per_rank = -(-n // self.world)
        valid = torch.ones(per_rank, dtype=torch.float64)
        if len(idx) < per_rank:
            valid[len(idx):] = 0.0
            idx = torch.cat([idx, torch.zeros(per_rank - len(idx), dtype=torch.long)])
        return idx, valid

    @torch.no_grad()
    def evaluate(self, engine: Any, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
        """{domain: mean masked-patch loss}; every rank must call it (collective)."""
        domains = list(self.crops)
        sums = torch.zeros(2, len(domains), dtype=torch.float64, device=device)
        was_training = engine.module.training
        engine.eval()
        for i, d in enumerate(domains):
            idx, valid = self._slice(len(self.crops[d]))
            for chunk, ok in zip(idx.split(self.batch_size), valid.split(self.batch_size), strict=True):
                x = self.crops[d][chunk].to(device=device, dtype=dtype)
                out = engine(x, noise=self.noise[d][chunk].to(device))
                ok = ok.to(device)
                sums[0, i] += (out.loss.double() * ok).sum()
                sums[1, i] += ok.sum()
        if was_training:
            engine.train()
        all_reduce_sum(sums)
        s, c = sums.cpu().numpy()
        return {d: float(s[i] / c[i]) for i, d in enumerate(domains) if c[i] > 0}
