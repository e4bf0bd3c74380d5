# The README's two commands: `make demo` (set up + main job) and `make test` (set up + all tests).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Benchmark files come with the package (rsdlib/benchmark_data, DATA.md): nothing outside the
# repository is read. An RSDLIB_DATA_DIR set by the user still wins (a folder of their own files).

# Locked environments (README, "Installing"): requirements/cpu.lock is what setup, demo, test and CI install
# (Linux x86_64, CPU torch); requirements/cuda.lock is for CUDA machines (CUDA torch + the vllm extra).
# `make lock` regenerates both from pyproject.toml with uv (pinned, in its own venv $(TOOLS)).
CPU_LOCK := requirements/cpu.lock
CUDA_LOCK := requirements/cuda.lock
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.9
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
# torch's CPU build (requirements/cpu.in) is on PyTorch's CPU index, not on PyPI; a local folder holding the
# wheel (TORCH_WHEELS, as on the CI machines) is used instead when it has it. Same file, same sha256.
TORCH_WHEELS ?= /opt/wheels
TORCH_CPU_SOURCE ?= $(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl),--find-links $(TORCH_WHEELS),\
	--extra-index-url https://download.pytorch.org/whl/cpu)
FLOOR_VENV := .venv-floor

.PHONY: setup demo rsd-demo lab lint test test-fast test-slow test-floor prepare lock clean

$(STAMP): pyproject.toml $(CPU_LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes $(TORCH_CPU_SOURCE) -r $(CPU_LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)

# CUDA first; the CPU lock is then resolved under the CUDA lock's pins (torch aside), so every package the two
# share has one version (tests/test_packaging.py checks it). uv keeps a lock's versions where they still satisfy
# pyproject.toml; `make lock UPGRADE=--upgrade` takes the newest releases instead.
UPGRADE ?=
lock: $(UV)         ## regenerate requirements/cuda.lock and requirements/cpu.lock from pyproject.toml
	$(UV) pip compile -q $(UPGRADE) pyproject.toml --all-extras $(LOCK_TARGET) --generate-hashes \
		--custom-compile-command "make lock" -o $(CUDA_LOCK)
	grep -oE '^[A-Za-z0-9._-]+==[^ ]+' $(CUDA_LOCK) | grep -v '^torch==' > $(TOOLS)/cuda-lock-pins.txt
	$(UV) pip compile -q $(UPGRADE) pyproject.toml requirements/cpu.in --extra test --extra notebooks $(LOCK_TARGET) \
		--generate-hashes -c $(TOOLS)/cuda-lock-pins.txt $(TORCH_CPU_SOURCE) \
		--custom-compile-command "make lock" -o $(CPU_LOCK)

setup: $(STAMP)

prepare: setup      ## download, verify and cache the embedded model pair
	$(BIN)/rsdlib prepare

demo: prepare       ## the main job: the demo reproduction (every table and figure) on the embedded pair
	$(BIN)/rsdlib reproduce --profile demo

rsd-demo: prepare   ## a one-minute RSD demo: a few problems, answers, fallback rate, sub-1% share
	$(BIN)/rsdlib demo

lab: setup          ## JupyterLab on notebooks/: a .py notebook opens as a notebook, saving writes the .py back
	JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter $(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

lint: setup         ## ruff (pyproject.toml [tool.ruff]): style and import errors
	$(BIN)/ruff check .

test-fast: setup    ## default suite: tiny models, no network
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup    ## real embedded 0.5B/1.5B models
	$(BIN)/python -m pytest -q -m slow --durations=5

test: lint test-fast test-slow

# The floors: pyproject.toml's lowest allowed version of every direct dependency (uv's lowest-direct
# resolution), in a venv of their own, then the default suite. Long (tens of minutes on 2 cores); not in CI.
test-floor: $(UV)   ## the fast suite on the oldest versions pyproject.toml allows
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(UV) pip compile -q pyproject.toml requirements/cpu.in --extra test --extra notebooks $(LOCK_TARGET) \
		--resolution lowest-direct $(TORCH_CPU_SOURCE) --no-header -q -o $(FLOOR_VENV)/floors.txt
	$(UV) pip install -q --python $(FLOOR_VENV)/bin/python $(TORCH_CPU_SOURCE) -r $(FLOOR_VENV)/floors.txt
	$(UV) pip install -q --python $(FLOOR_VENV)/bin/python --no-deps -e .
	$(FLOOR_VENV)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	grep -E '^(torch|transformers|peft|accelerate|tokenizers|huggingface-hub|datasets|jupytext)==' $(FLOOR_VENV)/floors.txt
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(TOOLS) results
