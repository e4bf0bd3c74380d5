# The README's two commands: `make demo` (set up + main job) and `make test` (set up + all tests).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Benchmark files come with the package (rsdlib/benchmark_data, DATA.md): nothing outside the
# repository is read. An RSDLIB_DATA_DIR set by the user still wins (a folder of their own files).

.PHONY: setup demo rsd-demo lab lint test test-fast test-slow prepare clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,notebooks]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

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

clean:
	rm -rf $(VENV) results
