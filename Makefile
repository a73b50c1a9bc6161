# raftmem: `make run` starts a local 3-node cluster, `make test` runs every test.
# Both install what they need: the virtualenv, pip packages, and apt packages.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := nftables iproute2 fuse3 gcc libc6-dev util-linux
SHARDS ?= 8
NODES ?= 3

.PHONY: run test unit integration lint fuzz jepsen jepsen-quick bench bench-etcd bench-wrk bench-million bench-coord bench-watch apt-deps clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3-venv missing: installing it"; apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,mcp,langgraph]'
	@touch $(STAMP)

# Packages the fault tests need; installed only when missing (root or sudo).
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

run: $(STAMP)
	$(VENV)/bin/raftmem cluster up --nodes $(NODES) --shards $(SHARDS) --config configs/local-3node.yaml --data-dir ./data

test: $(STAMP) apt-deps
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(MAKE) jepsen-quick

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

# The API contract test (tests/integration/test_contract.py) with the full budget:
# schemathesis over every operation of /openapi.json against a real 3-node cluster,
# FUZZ_EXAMPLES per operation, fuzzing and stateful phases repeated for FUZZ_TIME_S.
# `make test` runs the same test with 8 examples and seed 18 (35-105 s here, by load).
FUZZ_EXAMPLES ?= 200
FUZZ_TIME_S ?= 1800
FUZZ_SEED ?= 18
fuzz: $(STAMP)
	RAFTMEM_CONTRACT_EXAMPLES=$(FUZZ_EXAMPLES) RAFTMEM_CONTRACT_MAX_TIME_S=$(FUZZ_TIME_S) \
	RAFTMEM_CONTRACT_SEED=$(FUZZ_SEED) RAFTMEM_CONTRACT_TIMEOUT_S=$$(( $(FUZZ_TIME_S) * 3 + 600 )) \
	  $(PY) -m pytest -q -s -p no:cacheprovider --timeout=0 tests/integration/test_contract.py

jepsen: $(STAMP) apt-deps
	$(PY) -m jepsen_like matrix --out runs/jepsen

jepsen-quick: $(STAMP) apt-deps
	$(PY) -m jepsen_like matrix --quick --out runs/jepsen-quick

bench: $(STAMP)
	$(VENV)/bin/raftmem bench --url http://127.0.0.1:8781 --clients 32 --duration 20 --mix 0:100 --value-bytes 200

bench-etcd: $(STAMP)
	PYTHON=$(PY) bash bench/etcd_compare.sh

bench-wrk: $(STAMP)
	PYTHON=$(PY) bash bench/wrk_compare.sh

bench-million: $(STAMP)
	PYTHON=$(PY) PRELOAD=$${PRELOAD:-1000000} bash bench/wrk_compare.sh

bench-watch: $(STAMP)
	PYTHON=$(PY) bash bench/watch_compare.sh

bench-coord: $(STAMP)
	PYTHON=$(PY) bash bench/coord_compare.sh

clean:
	rm -rf data runs .pytest_cache
