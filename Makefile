# The two front-door commands (see README.md): `make run` and `make check test`.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
# Seeds of the simulation CI judges (5 nodes, 60 simulated seconds, every fault kind).
SEEDS ?= 100
SIM_JOBS ?= 2
# pytest-xdist workers; a file's tests stay in one worker (they share module fixtures).
TEST_JOBS ?= 2

.PHONY: run test test-unit sim lint typecheck check bench bench-cluster

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/count-server

# Everything: unit, simulation and end-to-end tests, two test files at a time, with the
# simulation's seeds beside them at a lower priority (the end-to-end tests mostly wait on
# real time, so the seeds take the idle cores without slowing the real processes).
test: $(STAMP)
	@nice -n 10 $(BIN)/python -m count.sim --seeds $(SEEDS) --jobs $(SIM_JOBS) > .sim-seeds.log 2>&1 & \
	sim=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile; tests=$$?; \
	wait $$sim; seeds=$$?; \
	grep -v '^seed=.* lost=0 maybe=[0-9]* phantom=0 divergent=0 stale_reads=0 errors=0 hints=0 leftover=0 ' .sim-seeds.log; \
	echo "simulation: $$(tail -1 .sim-seeds.log)"; \
	test $$tests -eq 0 -a $$seeds -eq 0

# Fast, no root, no processes: the pure parts and the simulation's own tests.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/sim

# More seeds: make sim SEEDS=1000 (two processes; SIM_JOBS= to change)
sim: $(STAMP)
	$(BIN)/python -m count.sim --seeds $(SEEDS) --jobs $(SIM_JOBS)

lint: $(STAMP)
	$(BIN)/ruff check count tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

bench: $(STAMP)
	$(BIN)/python scripts/bench_node.py

bench-cluster: $(STAMP)
	$(BIN)/python scripts/bench_cluster.py
