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
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the app with its test and dev tools

kafka-fetch: $(STAMP) ## Fetch the Apache Kafka jars through Maven (cached in ~/.cache/orderstream)
	$(PY) scripts/kafka_local.py fetch

run: $(STAMP) ## Set up, start Kafka + a worker + demo stock, print the dashboard URL (Ctrl-C stops all)
	$(PY) scripts/run.py

lint: $(STAMP) ## ruff, ruff format --check, mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy app agents tables schemas scripts

unit: $(STAMP) ## Pure unit tests (no broker)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test: $(STAMP) kafka-fetch lint ## Set up and run the whole suite: lint, unit, integration and end-to-end on a real broker
	$(PY) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

crash-test: $(STAMP) kafka-fetch ## Full crash test: 1,000+ orders, SIGKILLs, both guarantees (ORDERS=, RATE= to size)
	$(PY) -m tests.crash --orders $${ORDERS:-1200} --rate $${RATE:-40} --guarantee exactly_once
	$(PY) -m tests.crash --orders $${ORDERS:-1200} --rate $${RATE:-40} --guarantee at_least_once

loadgen: $(STAMP) ## Place orders against a running worker (ARGS="--orders 1000 --rate 200")
	$(PY) -m app.loadgen $(ARGS)

bench: $(STAMP) kafka-fetch ## Throughput, latency, CPU and bytes per order through Kafka vs a plain-Python ceiling (ARGS="--orders 2000 --rates 500,max")
	$(PY) -m app.bench $(ARGS)

format: $(STAMP) ## Apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean: ## Remove local data directories (not the Kafka jar cache)
	rm -rf .data orderstream-data

.PHONY: help install kafka-fetch run lint unit test crash-test loadgen bench format clean
