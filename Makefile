# The two quickstart commands are `make run` and `make test`; each does all set-up.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTHON ?= python3

.PHONY: run test test-cluster lint typecheck unit bench drill services venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[worker,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

services:
	.ci/services rabbitmq redis

## make run: the worker on local RabbitMQ; vendors without credentials use the built-in sandboxes.
run: $(STAMP)
	.ci/services rabbitmq
	SWITCHBOARD_SANDBOX=$${SWITCHBOARD_SANDBOX:-true} $(BIN)/switchboard run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## make test: lint, types, and every test against the real RabbitMQ, Redis and PostgreSQL, the short
## cluster drill included (tests/cluster start a local three-node cluster beside the default node and
## stop it after; they need root, and fail when it cannot start unless SWITCHBOARD_TEST_CLUSTER=skip).
test: $(STAMP)
	.ci/services rabbitmq redis
	$(MAKE) --no-print-directory lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## make test-cluster: only the tests on the local three-node RabbitMQ cluster (started and stopped by them).
test-cluster: $(STAMP)
	.ci/services rabbitmq redis
	$(BIN)/pytest -q -p no:cacheprovider -m cluster tests/cluster $(PYTEST_ARGS)

## make bench [QUICK=1] [STORES=sqlite,redis,postgres]: throughput and latency against a bare asyncio baseline, per store.
# Not $(or $(STORES),sqlite,...): make splits a function's arguments at commas, so that gave sqlite alone.
STORES ?= sqlite,redis,postgres
bench: $(STAMP)
	.ci/services rabbitmq redis postgres
	$(BIN)/python -m bench $(if $(QUICK),--quick) --store $(STORES) $(BENCH_ARGS)

## make drill [COMMANDS=10000 WORKERS=3] [CLUSTER=1]: the long crash drill, with a summary table.
## CLUSTER=1: on a local three-node RabbitMQ cluster (started and stopped by the drill), with a
## leader stop and a node kill instead of the broker restart.
drill: $(STAMP)
	.ci/services rabbitmq redis
	$(BIN)/python -m tests.drills.crash --commands $(or $(COMMANDS),10000) --workers $(or $(WORKERS),3) \
		$(if $(CLUSTER),--cluster --store $(or $(STORE),sqlite))

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
