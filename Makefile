# Set-up and the main job. `make test` and `make demo` work on a fresh clone:
# each creates .venv, installs slfer with its test extras, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1

DATA ?=
FORMAT ?= folder
LIMIT ?=
WORK ?= work/demo

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" DATA="$(DATA)" FORMAT="$(FORMAT)" LIMIT="$(LIMIT)" WORK="$(WORK)" \
		bash scripts/demo.sh

clean:
	rm -rf $(VENV) work *.egg-info
