# orderstream — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# setuptools prints a notice on every editable install; it is about editable installs in
	@# general, not this project (package data is declared), so it is filtered here.
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the app with its test and dev tools

kafka-fetch: $(STAMP) ## Fetch the Apache Kafka jars through Maven (cached in ~/.cache/orderstream)
	$(PY) scripts/kafka_local.py fetch

# With a Docker engine the tests run Kafka in a container: no jars (and no Maven) needed.
kafka-fetch-unless-docker: $(STAMP)
	@if $(PY) -c 'import sys; from scripts.kafka_local import docker_available; sys.exit(0 if docker_available() else 1)'; \
	then echo "Docker answers: Kafka runs in a container, no jar fetch"; \
	else $(PY) scripts/kafka_local.py fetch; fi

run: $(STAMP) ## Set up, start Kafka + a worker + demo stock, print the dashboard URL (Ctrl-C stops all; VERBOSE=1 shows the worker log)
	@$(PY) scripts/run.py

lint: $(STAMP) ## ruff, ruff format --check, mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy app agents tables schemas scripts

unit: $(STAMP) ## Pure unit tests (no broker)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test: $(STAMP) kafka-fetch-unless-docker lint ## Set up and run the whole suite: lint, unit, integration and end-to-end on a real broker
	$(PY) -m pytest tests -q -m "not slow" --durations=25 $(PYTEST_ARGS)

crash-test: $(STAMP) kafka-fetch-unless-docker ## Full crash test: 1,000+ orders, SIGKILLs, both guarantees (ORDERS=, RATE= to size)
	$(PY) -m tests.crash --orders $${ORDERS:-1200} --rate $${RATE:-40} --guarantee exactly_once
	$(PY) -m tests.crash --orders $${ORDERS:-1200} --rate $${RATE:-40} --guarantee at_least_once

fuzz: $(STAMP) kafka-fetch ## Schemathesis at full size against /openapi.json of two live workers (EXAMPLES=, SEED= to size)
	ORDERSTREAM_FUZZ_EXAMPLES=$${EXAMPLES:-200} ORDERSTREAM_FUZZ_SEED=$${SEED:-$$RANDOM} \
		$(PY) -m pytest tests/e2e/test_schemathesis.py -q -p no:cacheprovider --timeout 3600 $(PYTEST_ARGS)

loadgen: $(STAMP) ## Place orders against a running worker (ARGS="--orders 1000 --rate 200")
	$(PY) -m app.loadgen $(ARGS)

chromium: ## Install Debian's chromium for the dashboard's screenshot test (apt-get; sudo when not root)
	@if command -v chromium >/dev/null; then chromium --version 2>/dev/null; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update && $$SUDO apt-get install -y chromium; fi

readme-settings: $(STAMP) ## Rewrite the README's settings table from app/settings.py (python -m app.settings)
	$(PY) -c 'import pathlib, subprocess, sys; \
	table = subprocess.run([sys.executable, "-m", "app.settings"], capture_output=True, text=True, check=True).stdout.strip(); \
	path = pathlib.Path("README.md"); text = path.read_text(); \
	start = text.index("-->", text.index("<!-- settings: generated")) + 3; end = text.index("<!-- end of settings -->"); \
	path.write_text(text[:start] + "\n" + table + "\n" + text[end:])'

bench: $(STAMP) kafka-fetch ## Throughput, latency, CPU and bytes per order through Kafka vs a plain-Python ceiling (ARGS="--orders 2000 --rates 500,max")
	$(PY) -m app.bench $(ARGS)

format: $(STAMP) ## Apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean: ## Remove local data directories (not the Kafka jar cache)
	rm -rf .data orderstream-data

.PHONY: help install kafka-fetch kafka-fetch-unless-docker run lint unit test crash-test fuzz loadgen bench chromium readme-settings format clean
