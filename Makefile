# txwatch — the two commands of the quick start are `make demo` and `make test`.
# The interpreter: the distribution's /usr/bin/python3.11 when it can make a venv and build
# the compiled modules (Debian and Ubuntu build theirs with profile-guided optimisation: the
# flow runs a fifth faster than on a default pyenv build, README "Benchmarks"), else the
# python3.11 on PATH. `make PYTHON=...` (or PYTHON in the environment) chooses another.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(shell p=/usr/bin/python3.11; $$p -c 'import ensurepip, os, sysconfig; \
  assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
  2>/dev/null && echo $$p),python3.11)
endif
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install native demo test lint bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	TXWATCH_PURE_PYTHON=1 $(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The per-event modules compiled by mypyc and the C extensions (operators/native.py lists
# them), rebuilt beside their sources whenever an operator changes; txwatch runs them as plain
# Python without it.
# (extensions of earlier builds go first: one of a module no longer compiled would shadow it)
$(BIN)/.native: $(BIN)/.installed setup.py $(wildcard operators/*.py operators/models/*.py operators/models/*.c)
	rm -f operators/*.so operators/models/*.so
	$(BIN)/python setup.py -q build_ext --inplace >/dev/null
	@touch $@

install: $(BIN)/.native  ## create .venv with every extra, compile the hot path

native: $(BIN)/.native  ## recompile the hot path (mypyc) after editing operators/

demo: install  ## run the whole pipeline on embedded Kafka and PostgreSQL (ARGS="--duration 60")
	$(BIN)/txwatch demo $(ARGS)

test: install  ## install, then run every test (unit, integration, browser, Prometheus)
	bash scripts/ensure-debian-packages.sh prometheus chromium
	$(BIN)/ruff check .
	TXWATCH_REQUIRE_NATIVE=1 $(BIN)/pytest -q $(PYTEST_ARGS)

lint: install  ## ruff
	$(BIN)/ruff check .

bench: install  ## txwatch bench (prints figures)
	$(BIN)/txwatch bench $(ARGS)

clean:  ## remove the virtualenv, caches and compiled modules
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build
	find . -name '*.so' -not -path './$(VENV)/*' -delete
