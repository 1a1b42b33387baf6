"""Per-domain loss / consumption accounting and throughput (samples/s, MFU, data wait).

DomainMeter keeps per-domain (loss sum, count) for the current optimizer step on the training
device and all-reduces them across ranks once per step (one small tensor, 2K floats), so every
rank holds the same global per-domain losses and the same realised consumption. Consumption is
counted from the domain ids in the batches the model actually saw, not from the requested
weights.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mixpretrain.train.dist import all_reduce_sum

# Dense bf16 peak of the accelerator, used for MFU. Matched by substring of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0, "V100": 125.0}


class DomainMeter:
    """Per-domain loss sums and counts; ``consumed`` accumulates the realised sample counts."""

    def __init__(self, domains: tuple[str, ...], device: torch.device) -> None:
        self.domains = domains
        self.device = device
        k = len(domains)
        self._step = torch.zeros(2, k, dtype=torch.float64, device=device)  # [sum, count]
        self._interval = np.zeros((2, k))  # since the last sampler observation
        self.consumed = np.zeros(k, dtype=np.int64)

    def add(self, loss_per_sample: torch.Tensor, domain: torch.Tensor) -> None:
        loss = loss_per_sample.detach().to(torch.float64).reshape(-1)
        dom = domain.to(self.device).reshape(-1)
        self._step[0].index_add_(0, dom, loss)
        self._step[1].index_add_(0, dom, torch.ones_like(loss))

    def reduce_step(self) -> np.ndarray:
        """All-reduce this step's sums; returns the global [2, K] (loss sum, count) and resets."""
        all_reduce_sum(self._step)
        step = self._step.cpu().numpy().copy()
        self._step.zero_()
        self._interval += step
        self.consumed += step[1].astype(np.int64)
        return step

    def pop_interval(self) -> dict[str, float]:
        """Mean loss per domain since the last call (for the sampler's observe)."""
        sums, counts = self._interval
        self._interval = np.zeros_like(self._interval)
        return _means(self.domains, sums, counts)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed.tolist(), "interval": self._interval.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = np.asarray(state["consumed"], dtype=np.int64)
        self._interval = np.asarray(state["interval"], dtype=np.float64)


def _means(domains: tuple[str, ...], sums: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    return {d: float(s / c) for d, s, c in zip(domains, sums, counts, strict=True) if c > 0}


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of a known GPU, else None (no MFU reported on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


class SpeedMonitor:
    """Samples/s, MFU and the fraction of wall time spent waiting for data, over a window."""

    def __init__(self, flops_per_sample: float, world_size: int, device: torch.device, window: int = 20) -> None:
        self.flops_per_sample = flops_per_sample
        self.world_size = world_size
        self.peak = peak_flops(device)
        self.window = window
        self._hist: list[tuple[float, float, int]] = []  # (step wall s, data wait s, global samples)
        self.total_wait = 0.0
        self.total_time = 0.0

    def record(self, step_seconds: float, wait_seconds: float, global_samples: int) -> None:
        self._hist.append((step_seconds, wait_seconds, global_samples))
        self._hist = self._hist[-self.window :]
        self.total_wait += wait_seconds
        self.total_time += step_seconds

    def stats(self) -> dict[str, float]:
        if not self._hist:
            return {}
        t = sum(h[0] for h in self._hist)
        w = sum(h[1] for h in self._hist)
        n = sum(h[2] for h in self._hist)
        sps = n / t if t > 0 else 0.0
        out = {"samples_per_s": sps, "data_wait": w / t if t > 0 else 0.0, "step_time": t / len(self._hist)}
        if self.peak:
            out["mfu"] = sps * self.flops_per_sample / (self.peak * self.world_size)
        return out


class Stopwatch:
    """Wall clock that synchronises the device first, so GPU work is not mis-attributed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
