"""Distributed helpers that work the same under ``deepspeed``, ``torchrun`` and plain ``python``.

The launchers differ only in the environment they leave behind: ``deepspeed`` and ``torchrun``
both export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; plain ``python`` exports
nothing. For one process we fill those in ourselves (a free local port), so DeepSpeed never falls
back to MPI discovery, and every later call (all-reduce, broadcast, barrier) runs through one code
path whatever the world size.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill_single_process_env() -> None:
    """Plain ``python launch/pretrain.py``: a world of one on this machine."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def init_distributed(local_rank: int | None = None) -> DistInfo:
    """Start the process group (nccl on CUDA, the accelerator's choice, gloo on CPU) once."""
    _fill_single_process_env()
    if local_rank is not None and local_rank >= 0:
        os.environ["LOCAL_RANK"] = str(local_rank)  # deepspeed's injected --local_rank wins
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if accel.device_name() == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = torch.device(accel.device_name())
        backend = accel.communication_backend_name()  # gloo unless oneCCL is installed
    if not dist.is_initialized():
        if device.type == "cpu":
            _skip_shm_comm_op()
        deepspeed.init_distributed(dist_backend=backend)
        if device.type == "cpu":
            _unlink_shm_buffer()
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local, device, backend)
    log.info("rank %d/%d on %s (backend %s)", info.rank, info.world_size, device, backend)
    return info


def _skip_shm_comm_op() -> None:
    """On CPU, do not JIT-build DeepSpeed's shared-memory all-reduce op.

    DeepSpeed serves only ``inference_all_reduce`` (tensor-parallel inference) with it, and
    falls back to the process group's all-reduce without it; training never calls it. Building it
    costs a C++ compile at first start (minutes on a busy 2-core machine, again whenever another
    checkout shares the extension cache with other flags) and 69 MB of /dev/shm per rank that
    DeepSpeed never frees. ``MIXPRETRAIN_DS_SHM_COMM=1`` keeps DeepSpeed's default.
    """
    if os.environ.get("MIXPRETRAIN_DS_SHM_COMM") == "1":
        return
    try:  # importlib: the attribute deepspeed.comm.torch is the torch package, not the submodule
        ds_torch = importlib.import_module("deepspeed.comm.torch")
    except ImportError:  # another DeepSpeed layout: keep its default
        return
    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = lambda: None


def _unlink_shm_buffer() -> None:
    """Remove the name of DeepSpeed's CPU shared-memory all-reduce buffer (69 MB per rank).

    DeepSpeed's CPU backend creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
    at init and never unlinks it, so every multi-rank CPU run leaks RAM in /dev/shm. Once every
    rank has mapped every buffer (init returned on all ranks: barrier), the names are no longer
    needed: unlinking keeps the mappings valid and frees the memory when the processes exit,
    even after SIGKILL.
    """
    if dist.get_world_size() < 2:
        return
    dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    path = os.path.join("/dev/shm", name)
    if os.path.exists(path):
        os.unlink(path)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum across ranks in place (no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, src=src)
    return t


def broadcast_object(obj: object, src: int = 0) -> object:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
