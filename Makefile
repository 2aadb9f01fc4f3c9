# Everything sets itself up on first use: `make demo` and `make test` need nothing done before.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; with a GPU, create the venv with your own torch first
# (e.g. `python3 -m venv --system-site-packages .venv`) and it is kept.
TORCH ?= torch==2.13.0
# Aggregator plugins, each its own distribution; a folder whose pyproject.toml has [tool.comfy] is a
# ComfyUI custom node (plugins/comfyui-trellis-mv), which ComfyUI loads from its custom_nodes folder.
PLUGINS := $(shell grep -L '^\[tool\.comfy\]' plugins/*/pyproject.toml)
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(PLUGINS))

.PHONY: setup demo app test check docs wheels clean

$(BIN)/.installed: pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" $(foreach d,$(PLUGIN_DIRS),-e $(d))
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/trellis-mv demo --out out/demo --overwrite

# the web page on http://127.0.0.1:7860 (proxy model, CPU)
app: $(BIN)/.installed
	$(BIN)/trellis-mv app

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# What CI runs: the tests, the docs with warnings as errors, the plugin wheels in a fresh venv.
check: test docs
	PYTHON=$(BIN)/python bash scripts/check_wheels.sh

docs: $(BIN)/.installed
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

wheels: $(BIN)/.installed
	rm -rf dist && $(BIN)/python -m build --wheel --outdir dist . -q
	$(foreach d,$(PLUGIN_DIRS),$(BIN)/python -m build --wheel --outdir dist $(d) -q &&) true

clean:
	rm -rf $(VENV) dist build out docs/_build .pytest_cache .hypothesis
