# Two commands a new user needs: `make demo` and `make test`.
# Both create .venv if missing and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch lies on disk on these machines; an unpinned torch pulls GBs of CUDA wheels.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint test-multinode docker-build bench clean wheels

$(STAMP): setup.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mixpretrain.demo

test: $(STAMP)
	OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu WANDB_MODE=offline $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

# Two launcher processes acting as two nodes on this machine (tests/multinode), alone.
test-multinode: $(STAMP)
	OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu WANDB_MODE=offline $(BIN)/python -m pytest -q tests/multinode

# Build the CPU image and run a few training steps inside it, where a Docker engine answers.
docker-build:
	@if ! docker info >/dev/null 2>&1; then \
		echo "docker-build: no Docker engine reachable here (docker info failed); skipping the image build and smoke run"; \
	else \
		docker build -f docker/Dockerfile --target cpu -t mixpretrain:cpu . && \
		docker run --rm --shm-size=1g mixpretrain:cpu bash -c 'set -e; echo "{}" > /tmp/smoke.yaml; \
			mixpretrain synth --out /tmp/shards --domains ct,mri,pet --cases 4 --size 32; \
			docker/entrypoint.sh --config /tmp/smoke.yaml data.shards=/tmp/shards output_dir=/tmp/run \
				train.max_steps=3 train.eval_every=3 data.num_workers=1 logging.wandb=false logging.progress_bar=false; \
			test -s /tmp/run/metrics.jsonl && tail -n 1 /tmp/run/metrics.jsonl'; \
	fi

# Wheels for a lent GPU machine (benchmarks/gpu/*.sh install .whl/ there): its image (python 3.12,
# torch, scipy, matplotlib, threadpoolctl, msgpack, psutil, py-cpuinfo, ninja, pyyaml, tqdm) lacks
# these. DeepSpeed ships only a source archive: built here into a pure-Python wheel (ops JIT-built
# there). SimpleITK (50 MB; only ingest and the NRRD/DICOM readers use it) and wandb stay behind:
# the device call carries 64 MiB at most. Versions follow .venv, so both machines run the same code.
WHEEL_PLATFORM := --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
WHEEL_PKGS := monai webdataset braceexpand hjson pydantic pydantic_core annotated-types typing-inspection \
	nibabel pydicom zstandard blosc2 ndindex numexpr
wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	DS_BUILD_OPS=0 $(BIN)/pip wheel -q --no-deps -w .whl "deepspeed==$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('deepspeed'))")"
	$(BIN)/pip download -q --no-deps $(WHEEL_PLATFORM) -d .whl \
		$$(for p in $(WHEEL_PKGS); do echo "$$p==$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('$$p'))")"; done)
	@du -sh .whl && ls .whl

clean:
	rm -rf $(VENV) build *.egg-info
