# Two commands a new user needs: `make demo` and `make test`.
# Both create .venv if missing and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch lies on disk on these machines; an unpinned torch pulls GBs of CUDA wheels.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint test-multinode docker-build bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info
