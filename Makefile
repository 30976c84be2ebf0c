# make demo: set up and run two demo AgentOS upstreams and the gateway in front of them on http://localhost:7777
# make test: set up and run the test suite (deploy/tools.sh first: the deployment checks' tools)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test setup deploy-tools clean

setup: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies changed.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,postgres]"
	touch $@

# docker-compose, promtool and PostgreSQL from Debian's packages, each only when missing. When one
# cannot be had the tests that need it fail saying so: the suite still runs.
deploy-tools:
	@bash deploy/tools.sh || echo "make: deploy/tools.sh could not install every tool; the tests that need one will fail naming it" >&2

demo: $(INSTALLED)
	$(BIN)/agentos-gateway demo --upstreams 2

test: $(INSTALLED) deploy-tools
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
