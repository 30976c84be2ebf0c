# make demo: set up and run two demo AgentOS upstreams and the gateway in front of them on http://localhost:7777
# make test: set up and run the test suite (deploy/tools.sh first: the deployment checks' tools)
# make bench: the benchmark (direct, nginx, a raw ASGI floor under uvicorn and under granian, and the gateway, in one run; docs/performance.md)
# make loadtest: locust users against the demo gateway for 30 s; exits non-zero on any failure
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
LOAD_INSTALLED := $(VENV)/.installed-load
BENCH_ARGS ?=
LOADTEST_ARGS ?=

.PHONY: demo test setup deploy-tools bench loadtest clean

setup: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies changed.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,postgres,doors]"
	touch $@

# docker-compose, promtool and PostgreSQL from Debian's packages, each only when missing. When one
# cannot be had the tests that need it fail saying so: the suite still runs.
deploy-tools:
	@bash deploy/tools.sh || echo "make: deploy/tools.sh could not install every tool; the tests that need one will fail naming it" >&2

# The optional `load` extra (locust), only for the load targets.
$(LOAD_INSTALLED): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e ".[dev,postgres,doors,load]"
	touch $@

demo: $(INSTALLED)
	$(BIN)/agentos-gateway demo --upstreams 2

# Two pytest-xdist workers, a test file each at a time (a file's module fixtures start once):
# most tests wait on processes, so two overlap well on two cores. PYTEST_ARGS= runs in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

test: $(INSTALLED) deploy-tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Installs nginx-light and wrk from Debian when missing (root). BENCH_ARGS=--quick for a smoke run.
bench: $(LOAD_INSTALLED)
	$(BIN)/python loadtests/bench.py $(BENCH_ARGS)

loadtest: $(LOAD_INSTALLED)
	$(BIN)/python loadtests/run_locust.py $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
