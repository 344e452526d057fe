# make test      : bootstrap .venv (again whenever pyproject.toml changes) and run the suite
# make test-fast : only the tier that needs no server and starts no process (markers in
#                  pyproject.toml, tests/support/tiers.py)
# make up   : bootstrap .venv and run the system locally
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: test test-fast up lint bench clean compose-test

# constraints.txt pins the versions the suite is tested with (ranges are in pyproject.toml)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not nats and not postgres and not processes and not slow and not e2e" $(PYTEST_ARGS)

up: $(STAMP)
	$(VENV)/bin/flashgate dev up --home .flashgate

lint: $(STAMP)
	$(VENV)/bin/ruff check flashgate tests bench
	$(VENV)/bin/mypy flashgate
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(VENV)/bin/python bench/crypto.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache .mypy_cache

# make compose-test : build the image, run compose.yaml for real (put/rotate/delete a secret,
# revoke a node, rotate the fleet key, restart PostgreSQL and bridges), tear it all down.
# Needs Docker (uses ../shared/compose-sandbox where present); not part of `make test`.
compose-test: $(STAMP)
	$(VENV)/bin/python tests/compose/run.py $(COMPOSE_TEST_ARGS)
