"""Two nodes on one machine: two launcher processes (docker/entrypoint.sh -> deepspeed --no_ssh,
node rank 0 and 1, loopback rendezvous) run a few CPU training steps of launch/pretrain.py on
phantom shards; every rank must hold the same per-domain metrics, and those must be the sums of
what each rank saw."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "launch" / "pretrain.py"
PROBE = Path(__file__).with_name("rank_probe.py")
MICRO_BATCH, STEPS, NODES = 2, 4, 2
DOMAINS = ["ct", "mri", "pet"]

pytestmark = pytest.mark.skipif(not PRETRAIN.is_file(), reason=f"{PRETRAIN} does not exist yet (trainer, issue 6)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    cmd = [sys.executable, "-m", "mixpretrain.cli", "synth", "--out", str(out), "--domains", ",".join(DOMAINS),
           "--cases", "6", "--size", "24", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


def write_config(path: Path, shards: Path, output_dir: Path) -> Path:
    cfg = {
        "output_dir": str(output_dir),
        "data": {"shards": str(shards), "crop_size": [16, 16, 16], "crops_per_volume": 2, "num_workers": 0,
                 "shuffle_buffer": 4, "val_crops_per_domain": 2},
        "model": {"preset": "tiny", "patch_size": 8},
        "sampler": {"name": "odm", "update_every": 1},  # an online sampler: weights change every step
        "train": {"max_steps": STEPS, "micro_batch_size": MICRO_BATCH, "warmup_steps": 1, "eval_every": 2,
                  "checkpoint_every": STEPS, "log_every": 1},
        "logging": {"wandb": False, "progress_bar": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


Node = tuple[subprocess.Popen, Path]


def start_nodes(config: Path, probe_dir: Path, logs: Path, *overrides: str, tag: str = "") -> list[Node]:
    """Start node 0 and node 1, each through the container entrypoint (deepspeed --no_ssh)."""
    port = str(free_port())
    nodes = []
    for node in range(NODES):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HOSTFILE")}
        env.update(NNODES=str(NODES), NODE_RANK=str(node), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   NPROC_PER_NODE="1", MIXPRETRAIN_SCRIPT=str(PROBE), PROBE_DIR=str(probe_dir),
                   DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", WANDB_MODE="offline", TMPDIR=str(logs),
                   DEEPSPEED_TIMEOUT="2",  # minutes: a lost peer must end the survivor, not hang it
                   PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
        log = logs / f"node{node}{tag}.log"
        with open(log, "w") as f:
            cmd = ["bash", str(REPO / "docker" / "entrypoint.sh"), "--config", str(config), *overrides]
            nodes.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                           start_new_session=True), log))
    return nodes


def kill_node(node: Node) -> None:
    """SIGKILL the node's whole process tree (launcher and ranks), as a lost machine would."""
    try:
        os.killpg(node[0].pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_nodes(nodes: list[Node], timeout: float = 240) -> list[tuple[int, str]]:
    """(exit code, log) per node; a node still running after ``timeout`` is killed (rc -9)."""
    results = []
    for proc, log in nodes:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for node in nodes:  # a hung rendezvous or collective: take both nodes down
                kill_node(node)
            rc = proc.wait()
        results.append((rc, log.read_text()))
    return results


def read_probe(probe_dir: Path, rank: int) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(x) for x in (probe_dir / f"rank{rank}.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == "meter"], [x["record"] for x in lines if x["kind"] == "log"]


def test_two_nodes_agree_on_per_domain_metrics(shards: Path, tmp_path: Path) -> None:
    out, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    config = write_config(tmp_path / "run.yaml", shards, out)
    results = wait_nodes(start_nodes(config, probe, tmp_path))
    for node, (rc, log) in enumerate(results):
        assert rc == 0, f"node {node} exited {rc}:\n{log[-4000:]}"
    assert all("entrypoint: run: deepspeed" in log and "--no_ssh" in log for _, log in results)
    assert not list(tmp_path.glob("mixpretrain-*"))  # each node's generated hostfile (TMPDIR) is gone

    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == NODES
    meters = {r: read_probe(probe, r)[0] for r in range(NODES)}
    logs = {r: read_probe(probe, r)[1] for r in range(NODES)}
    assert len(meters[0]) == len(meters[1]) == STEPS

    # Each step's global per-domain (loss sum, count) is the sum of both ranks' own values, and
    # both ranks received the same result; both ranks trained on a full micro-batch.
    for s in range(STEPS):
        local = [np.asarray(meters[r][s]["local"]) for r in range(NODES)]
        for r in range(NODES):
            np.testing.assert_allclose(meters[r][s]["global"], local[0] + local[1], rtol=1e-12)
            assert local[r][1].sum() == MICRO_BATCH
        assert meters[0][s]["global"] == meters[1][s]["global"]

    # The records every rank built hold the same per-domain metrics and consumption.
    assert [x["step"] for x in logs[0]] == list(range(1, STEPS + 1)) == [x["step"] for x in logs[1]]
    agreed = ("step", "samples", "consumed", "weights", "weights_version", "loss")
    for a, b in zip(logs[0], logs[1], strict=True):
        per_domain = sorted(k for k in a if k.startswith(("loss/", "val/")))
        assert per_domain == sorted(k for k in b if k.startswith(("loss/", "val/")))
        for key in (*agreed, *per_domain):
            assert a[key] == b[key], f"step {a['step']}: {key} differs across ranks: {a[key]} vs {b[key]}"
    last = logs[0][-1]
    assert last["samples"] == STEPS * MICRO_BATCH * NODES
    assert sum(last["consumed"].values()) == last["samples"]
    assert any(k.startswith("val/") for k in last)

    # Rank 0's metrics.jsonl is what every rank computed.
    written = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [{k: w[k] for k in agreed} for w in written] == [{k: x[k] for k in agreed} for x in logs[1]]
    first = written[0]
    totals = np.sum([np.asarray(meters[r][0]["local"]) for r in range(NODES)], axis=0)
    for i, d in enumerate(sorted(DOMAINS)):
        if totals[1][i]:
            assert first[f"loss/{d}"] == pytest.approx(totals[0][i] / totals[1][i], rel=1e-9)


def test_node_loss_then_resume(shards: Path, tmp_path: Path) -> None:
    """Kill node 1 after the first checkpoint: node 0 must exit with an error (not hang), and the
    same command on both nodes must resume from that checkpoint and finish the run."""
    out, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    config = write_config(tmp_path / "run.yaml", shards, out)
    first_ckpt = out / "checkpoints" / "step00000002" / "COMPLETE"
    nodes = start_nodes(config, probe, tmp_path, "train.max_steps=200", "train.checkpoint_every=2", tag="-a")
    deadline = time.monotonic() + 240
    while not first_ckpt.is_file() and time.monotonic() < deadline and all(p.poll() is None for p, _ in nodes):
        time.sleep(0.1)
    kill_node(nodes[1])
    (rc0, log0), _ = wait_nodes(nodes, timeout=150)
    assert first_ckpt.is_file(), f"no checkpoint before the kill:\n{log0[-3000:]}"
    assert rc0 not in (0, -9), f"node 0 should fail on its own once node 1 is gone (rc {rc0}):\n{log0[-3000:]}"

    # Same command (a shorter horizon is an allowed change on resume) on a fresh rendezvous port.
    probe_b = tmp_path / "probe-b"
    probe_b.mkdir()
    results = wait_nodes(start_nodes(config, probe_b, tmp_path, "train.max_steps=6", "train.checkpoint_every=2",
                                     tag="-b"))
    for node, (rc, log) in enumerate(results):
        assert rc == 0, f"node {node} did not resume (rc {rc}):\n{log[-4000:]}"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))  # records past the checkpoint were set aside
    assert records[-1]["samples"] == 6 * MICRO_BATCH * NODES  # consumption carried over the restart
    for rank in range(NODES):
        steps = [r["step"] for r in read_probe(probe_b, rank)[1]]
        resumed_at = steps[0] - 1  # the checkpoint the second run started from, not step 0
        assert resumed_at >= 2 and resumed_at % 2 == 0 and steps == list(range(resumed_at + 1, 7)), steps
    last = [read_probe(probe_b, r)[1][-1] for r in range(NODES)]
    for key in ("consumed", "weights", "loss", "samples"):
        assert last[0][key] == last[1][key]
