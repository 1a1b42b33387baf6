"""docker/entrypoint.sh, run outside a container: argument passing, environment defaults,
launch-mode selection and the errors a misconfigured node gets."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"

# Variables a developer's or CI's shell may carry that would change what the entrypoint picks.
_LAUNCH_VARS = (
    "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE", "HOSTFILE", "WORLD_SIZE", "RANK",
    "PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NPROC_PER_NODE",
    "SLURM_NODEID", "CUDA_VISIBLE_DEVICES", "WANDB_MODE", "WANDB_API_KEY", "NCCL_DEBUG",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "MIXPRETRAIN_SHARDS", "MIXPRETRAIN_NODE_ENV", "MIXPRETRAIN_LAUNCHER",
    "MIXPRETRAIN_DRY_RUN", "MIXPRETRAIN_DS_LAUNCHER",
)


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    """A real training-script stand-in that records its argv and environment as JSON."""
    path = tmp_path / "record.py"
    path.write_text(
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, open(os.environ['RECORD_TO'], 'w'))\n"
    )
    return path


def entrypoint_env(env: dict[str, str], script: Path, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '/usr/bin:/bin')}"
    base.update({"MIXPRETRAIN_SCRIPT": str(script), "RECORD_TO": str(tmp_path / "record.json"), "TMPDIR": str(tmp_path)})
    base.update(env)
    return base


def _default_interrupt_signals() -> None:
    """The entrypoint starts as from a terminal, a scheduler or `docker run`: SIGINT/SIGQUIT at their
    defaults. pytest itself may run with them ignored (a CI job started in the background with `&`),
    and a shell cannot reset a signal ignored at its entry, so without this the entrypoint's own
    reset (for its background launcher) could not be tested there."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def run_entrypoint(args: list[str], env: dict[str, str], script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=entrypoint_env(env, script, tmp_path),
                          capture_output=True, text=True, timeout=60, preexec_fn=_default_interrupt_signals)


def dry_run(args: list[str], env: dict[str, str], script: Path, tmp_path: Path) -> list[str]:
    proc = run_entrypoint(args, {"MIXPRETRAIN_DRY_RUN": "1", **env}, script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def dry_run_hostfile(env: dict[str, str], script: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    """The dry-run command and the generated hostfile's lines, as printed: the file itself is gone."""
    proc = run_entrypoint([], {"MIXPRETRAIN_DRY_RUN": "1", **env}, script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert not Path(opt(cmd, "--hostfile")).exists() and not list(tmp_path.glob("mixpretrain-*"))
    return cmd, [line.split(": ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("hostfile: ")]


def opt(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_arguments_and_environment_reach_the_script(script: Path, tmp_path: Path) -> None:
    args = ["--config", "configs/a b.yaml", "train.max_steps=3", "sampler.options.note=it's \"quoted\"", "x=$HOME"]
    proc = run_entrypoint(args, {"MIXPRETRAIN_LAUNCHER": "python"}, script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["argv"] == args  # spaces, quotes and $ pass through untouched
    env = record["env"]
    assert env["NCCL_DEBUG"] == "WARN"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["WANDB_MODE"] == "offline"  # no key passed in: never try to reach wandb.ai
    assert env["PYTHONUNBUFFERED"] == "1"


def test_user_settings_win_over_defaults(script: Path, tmp_path: Path) -> None:
    env = {"MIXPRETRAIN_LAUNCHER": "python", "NCCL_DEBUG": "INFO", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0",
           "WANDB_MODE": "disabled"}
    assert run_entrypoint([], env, script, tmp_path).returncode == 0
    got = json.loads((tmp_path / "record.json").read_text())["env"]
    assert (got["NCCL_DEBUG"], got["TORCH_NCCL_ASYNC_ERROR_HANDLING"], got["WANDB_MODE"]) == ("INFO", "0", "disabled")


def test_wandb_goes_online_only_with_a_key(script: Path, tmp_path: Path) -> None:
    env = {"MIXPRETRAIN_LAUNCHER": "python", "WANDB_API_KEY": "k" * 40}
    assert run_entrypoint([], env, script, tmp_path).returncode == 0
    assert json.loads((tmp_path / "record.json").read_text())["env"]["WANDB_MODE"] == "online"


def test_single_node_runs_deepspeed_with_the_arguments(script: Path, tmp_path: Path) -> None:
    cmd = dry_run(["--config", "c.yaml", "k=v w"], {}, script, tmp_path)
    assert cmd[0] == "deepspeed" and "--hostfile" not in cmd and "--no_ssh" not in cmd
    assert cmd[-4:] == [str(script), "--config", "c.yaml", "k=v w"]
    cmd = dry_run([], {"NPROC_PER_NODE": "4", "MASTER_PORT": "29123"}, script, tmp_path)
    assert (opt(cmd, "--num_gpus"), opt(cmd, "--master_port")) == ("4", "29123")


def test_shard_urls_become_a_data_override(script: Path, tmp_path: Path) -> None:
    url = "pipe:cat /data/ct/train-{000000..000003}.tar"
    cmd = dry_run(["--config", "c.yaml"], {"MIXPRETRAIN_SHARDS": url}, script, tmp_path)
    assert cmd[-1] == f"data.shards={url}"
    cmd = dry_run([], {"MIXPRETRAIN_SHARDS": "https://bucket.example.com/shards/"}, script, tmp_path)
    assert cmd[-1] == "data.shards=https://bucket.example.com/shards/"


def test_pipe_through_a_missing_tool_fails_early(script: Path, tmp_path: Path) -> None:
    url = "pipe:no-such-cloud-cli s3 cp s3://bucket/ct/train-000000.tar -"
    proc = run_entrypoint([], {"MIXPRETRAIN_SHARDS": url}, script, tmp_path)
    assert proc.returncode == 2
    assert "no-such-cloud-cli" in proc.stderr and "not on PATH" in proc.stderr


def test_missing_local_shards_dir_is_an_error(script: Path, tmp_path: Path) -> None:
    proc = run_entrypoint([], {"MIXPRETRAIN_SHARDS": str(tmp_path / "nope")}, script, tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_missing_hostfile_gets_a_clear_error(script: Path, tmp_path: Path) -> None:
    missing = tmp_path / "hostfile"
    proc = run_entrypoint(["--config", "c.yaml"], {"HOSTFILE": str(missing)}, script, tmp_path)
    assert proc.returncode == 2
    assert f"hostfile '{missing}'" in proc.stderr and "not found" in proc.stderr
    assert not (tmp_path / "record.json").exists()  # nothing launched on this node alone


def test_malformed_hostfile_names_the_line(script: Path, tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=8\nnode-b 8\n")
    proc = run_entrypoint([], {"HOSTFILE": str(hostfile)}, script, tmp_path)
    assert proc.returncode == 2 and "line 3" in proc.stderr and "HOST slots=N" in proc.stderr


def test_hostfile_example_is_valid_and_used(script: Path, tmp_path: Path) -> None:
    example = REPO / "launch" / "hostfile.example"
    cmd = dry_run(["--config", "c.yaml"], {"HOSTFILE": str(example), "MASTER_ADDR": "10.0.0.1"}, script, tmp_path)
    assert opt(cmd, "--hostfile") == str(example) and opt(cmd, "--master_addr") == "10.0.0.1"
    assert "--no_ssh" not in cmd  # hostfile mode: deepspeed reaches the hosts itself (pdsh)
    # pdsh passes on only NCCL_*/PYTHON*/...: the rest goes through a DS_ENV_FILE the entrypoint writes
    env = {"HOSTFILE": str(example), "MIXPRETRAIN_DRY_RUN": "1", "WANDB_API_KEY": "k" * 40, "DS_ACCELERATOR": "cpu"}
    proc = run_entrypoint(["--config", "c.yaml"], env, script, tmp_path)
    forwarded = {line.split(": ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("ds_env: ")}
    assert {"WANDB_MODE", "WANDB_API_KEY", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "DS_ACCELERATOR"} <= forwarded
    assert "k" * 40 not in proc.stderr


def test_launcher_per_node(script: Path, tmp_path: Path) -> None:
    env = {"NNODES": "3", "NODE_RANK": "2", "MASTER_ADDR": "10.0.0.1", "NPROC_PER_NODE": "2"}
    cmd = dry_run(["--config", "c.yaml"], env, script, tmp_path)
    assert "--no_ssh" in cmd
    assert (opt(cmd, "--node_rank"), opt(cmd, "--master_addr")) == ("2", "10.0.0.1")
    assert opt(cmd, "--include") == "node0:0,1@node1:0,1@node2:0,1"
    assert dry_run_hostfile(env, script, tmp_path)[1] == ["node0 slots=2", "node1 slots=2", "node2 slots=2"]


def test_per_node_keeps_the_visible_gpus(script: Path, tmp_path: Path) -> None:
    env = {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h0", "CUDA_VISIBLE_DEVICES": "4,5"}
    cmd, hostfile = dry_run_hostfile(env, script, tmp_path)
    assert opt(cmd, "--include") == "node0:4,5@node1:4,5"
    assert hostfile == ["node0 slots=6", "node1 slots=6"]
    proc = run_entrypoint([], {**env, "CUDA_VISIBLE_DEVICES": "GPU-8d2e"}, script, tmp_path)
    assert proc.returncode == 2 and "torchrun" in proc.stderr


def test_one_node_keeps_the_visible_gpus(script: Path, tmp_path: Path) -> None:
    """SLURM exports NPROC_PER_NODE; with --num_gpus 2 deepspeed would take GPUs 0,1 whatever was
    assigned (4,5 on a shared node)."""
    cmd = dry_run([], {"NPROC_PER_NODE": "2", "CUDA_VISIBLE_DEVICES": "4,5,6"}, script, tmp_path)
    assert opt(cmd, "--include") == "localhost:4,5" and "--num_gpus" not in cmd


def test_torchrun_counts_gpus_given_by_uuid(script: Path, tmp_path: Path) -> None:
    """UUIDs are fine for torchrun (one process per visible GPU); the deepspeed-only index check
    used to fire inside a subshell, print an error and go on with 1 process."""
    env = {"MIXPRETRAIN_LAUNCHER": "torchrun", "CUDA_VISIBLE_DEVICES": "GPU-8d2e,GPU-77aa"}
    proc = run_entrypoint([], {"MIXPRETRAIN_DRY_RUN": "1", **env}, script, tmp_path)
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr
    assert opt(shlex.split(proc.stdout), "--nproc_per_node") == "2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNODES": "2", "NODE_RANK": "1"}, "needs MASTER_ADDR"),
        ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h0"}, "NODE_RANK='2'"),
        ({"NNODES": "two"}, "NNODES='two'"),
        ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE='0'"),
        ({"NNODES": "2", "NODE_RANK": "08", "MASTER_ADDR": "h0"}, "NODE_RANK='08'"),
        ({"MIXPRETRAIN_LAUNCHER": "mpirun"}, "not one of deepspeed, torchrun, python"),
        ({"MIXPRETRAIN_NODE_ENV": "lsf"}, "only 'kubeflow'"),
    ],
)
def test_bad_node_settings_are_errors(script: Path, tmp_path: Path, env: dict[str, str], message: str) -> None:
    proc = run_entrypoint([], env, script, tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_scheduler_variables_are_read(script: Path, tmp_path: Path) -> None:
    # torchrun-style PET_* (Kubeflow Trainer) and SLURM's node id in an srun step
    pet = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "m0", "PET_MASTER_PORT": "23456"}
    cmd = dry_run([], pet, script, tmp_path)
    assert (opt(cmd, "--node_rank"), opt(cmd, "--master_addr"), opt(cmd, "--master_port")) == ("1", "m0", "23456")
    cmd = dry_run([], {"NNODES": "4", "SLURM_NODEID": "3", "MASTER_ADDR": "gpu07"}, script, tmp_path)
    assert opt(cmd, "--node_rank") == "3"
    # Kubeflow Trainer's symbolic process count means "one per GPU": the entrypoint counts them
    cmd = dry_run([], {**pet, "PET_NPROC_PER_NODE": "auto", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, script, tmp_path)
    assert opt(cmd, "--include") == "node0:0,1,2,3@node1:0,1,2,3"


def test_kubeflow_world_size_and_rank_are_nodes(script: Path, tmp_path: Path) -> None:
    env = {"MIXPRETRAIN_NODE_ENV": "kubeflow", "WORLD_SIZE": "3", "RANK": "1", "MASTER_ADDR": "job-master-0",
           "MASTER_PORT": "23456", "NPROC_PER_NODE": "8"}
    cmd, hostfile = dry_run_hostfile(env, script, tmp_path)
    assert (opt(cmd, "--node_rank"), opt(cmd, "--master_addr")) == ("1", "job-master-0")
    assert hostfile == ["node0 slots=8", "node1 slots=8", "node2 slots=8"]


# ------------------------------------------------- files the entrypoint generates are removed
# A fake `deepspeed` first on PATH records what it was given while it runs (the generated hostfile
# and DS_ENV_FILE must exist then), whether SIGINT reached it ignored, and exits as told.
FAKE_DEEPSPEED = """\
import json, os, signal, sys, time
argv = sys.argv[1:]
hostfile = argv[argv.index("--hostfile") + 1] if "--hostfile" in argv else None
env_file = os.environ.get("DS_ENV_FILE")
record = {"argv": argv, "hostfile": hostfile, "hostfile_text": open(hostfile).read() if hostfile else None,
          "env_file": env_file, "env_names": [x.split("=")[0] for x in open(env_file)] if env_file else [],
          "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN}
json.dump(record, open(os.environ["FAKE_RECORD"] + ".part", "w"))
if os.environ.get("FAKE_MODE") == "until-term":
    def stop(signum, frame):
        open(os.environ["FAKE_RECORD"] + ".signal", "w").write(str(signum))
        sys.exit(7)
    signal.signal(signal.SIGTERM, stop)
os.replace(os.environ["FAKE_RECORD"] + ".part", os.environ["FAKE_RECORD"])
while os.environ.get("FAKE_MODE") == "until-term":
    time.sleep(0.05)
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


def fake_launcher_env(tmp_path: Path, **env: str) -> dict[str, str]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "deepspeed").write_text(f"#!{sys.executable}\n{FAKE_DEEPSPEED}")
    (bin_dir / "deepspeed").chmod(0o755)
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {"PATH": path, "FAKE_RECORD": str(tmp_path / "launcher.json"), **env}


def generated_files(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("mixpretrain-*"))  # the entrypoint's TMPDIR is tmp_path


@pytest.mark.parametrize("rc", [0, 3])
def test_generated_hostfile_is_removed_when_the_launch_ends(script: Path, tmp_path: Path, rc: int) -> None:
    """Launcher per node: the hostfile the entrypoint generates lives exactly as long as the
    launcher, whether it succeeds or fails, and the launcher's exit status is the entrypoint's."""
    env = fake_launcher_env(tmp_path, NNODES="2", NODE_RANK="1", MASTER_ADDR="h0", NPROC_PER_NODE="2",
                            FAKE_RC=str(rc))
    proc = run_entrypoint(["--config", "c.yaml"], env, script, tmp_path)
    assert proc.returncode == rc, proc.stderr
    seen = json.loads((tmp_path / "launcher.json").read_text())
    assert Path(seen["hostfile"]).parent == tmp_path and Path(seen["hostfile"]).name.startswith("mixpretrain-hostfile.")
    assert seen["hostfile_text"] == "node0 slots=2\nnode1 slots=2\n"  # there while the launcher ran
    assert seen["argv"][-3:] == [str(script), "--config", "c.yaml"]
    assert not seen["sigint_ignored"]  # run as a background job, yet Ctrl-C still stops the ranks
    assert generated_files(tmp_path) == []


def test_generated_ds_env_file_is_removed_and_user_files_are_kept(script: Path, tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=8\nnode-b slots=8\n")
    env = fake_launcher_env(tmp_path, HOSTFILE=str(hostfile), FAKE_RC="1")
    proc = run_entrypoint([], env, script, tmp_path)
    assert proc.returncode == 1, proc.stderr
    seen = json.loads((tmp_path / "launcher.json").read_text())
    assert seen["hostfile"] == str(hostfile) and Path(seen["env_file"]).name.startswith("mixpretrain-dsenv.")
    assert "WANDB_MODE" in seen["env_names"]  # written, read by the launcher, then removed
    assert generated_files(tmp_path) == []
    assert hostfile.read_text() == "node-a slots=8\nnode-b slots=8\n"  # the user's hostfile stays

    own = tmp_path / "my.deepspeed_env"  # a DS_ENV_FILE of the user's own: used, never removed
    own.write_text("FOO=1\n")
    proc = run_entrypoint([], {**env, "DS_ENV_FILE": str(own), "FAKE_RC": "0"}, script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "launcher.json").read_text())["env_file"] == str(own)
    assert own.read_text() == "FOO=1\n" and hostfile.is_file() and generated_files(tmp_path) == []
    assert "entrypoint: exec: deepspeed" in proc.stderr  # nothing generated: exec'd as before


def test_a_stopped_launch_passes_the_signal_on_and_removes_its_files(script: Path, tmp_path: Path) -> None:
    """`docker stop`, Kubernetes and scancel send SIGTERM to the entrypoint (PID 1 in a container):
    the launcher, now its child, must get it, and the generated files must still go."""
    env = fake_launcher_env(tmp_path, NNODES="2", NODE_RANK="0", MASTER_ADDR="h0", FAKE_MODE="until-term")
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=entrypoint_env(env, script, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "launcher.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "launcher.json").exists() and len(generated_files(tmp_path)) == 1
        proc.send_signal(signal.SIGTERM)  # to the entrypoint alone, not its process group
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "launcher.json.signal").read_text() == str(int(signal.SIGTERM))
    assert proc.returncode == 7, stderr  # the launcher's own exit status
    assert generated_files(tmp_path) == []


def test_torchrun_launcher(script: Path, tmp_path: Path) -> None:
    env = {"MIXPRETRAIN_LAUNCHER": "torchrun", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.1.1",
           "NPROC_PER_NODE": "4"}
    cmd = dry_run(["--config", "c.yaml"], env, script, tmp_path)
    assert cmd[0] == "torchrun"
    assert [opt(cmd, k) for k in ("--nnodes", "--node_rank", "--nproc_per_node", "--master_addr")] == [
        "2", "1", "4", "10.1.1.1"]
    assert cmd[-3:] == [str(script), "--config", "c.yaml"]


def test_a_command_on_path_runs_as_is(script: Path, tmp_path: Path) -> None:
    proc = run_entrypoint(["echo", "synth", "--out", "/x"], {}, script, tmp_path)
    assert proc.returncode == 0 and proc.stdout == "synth --out /x\n"


def test_help_prints_usage(script: Path, tmp_path: Path) -> None:
    proc = run_entrypoint(["--help"], {"MIXPRETRAIN_SCRIPT": str(tmp_path / "absent.py")}, script, tmp_path)
    assert proc.returncode == 0 and "MIXPRETRAIN_LAUNCHER" in proc.stdout
