# Two commands for a new user: `make demo` and `make test`. Both create .venv when it is missing.
#
# torch: where the environment has none, torch==2.13.0 is installed first, so that pip does not
# pull a CUDA build on a CPU machine (point pip at a CPU wheel index or folder with PIP_INDEX_URL or
# PIP_FIND_LINKS if your default index serves CUDA builds). The venv sees the system's site-packages,
# so a torch you already have is kept.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,sd3,text,postgres,ann
STAMP := $(VENV)/.installed

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

demo: env
	$(BIN)/flowctl bench --out results/demo

test: env
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
