# The two commands of the README: `make run` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint check bench faults clean

$(BIN)/scalesocket: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench,redis]'
	touch $@

# A shared chat room: open http://localhost:9000/?room=lobby in two browser tabs.
run: $(BIN)/scalesocket
	$(BIN)/scalesocket --addr 0.0.0.0:9000 --staticdir examples/chat --frame=json \
		--joinmsg '{"type":"join"}' --leavemsg '{"type":"leave"}' examples/chat/chat.py

lint: $(BIN)/scalesocket
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest

check: test

bench: $(BIN)/scalesocket
	$(BIN)/python -m bench

# Hostile clients and children against a real server, one table (docs/faults.md). make test runs
# the same scenarios with smaller counts (tests/test_faults.py).
faults: $(BIN)/scalesocket
	$(BIN)/python -m faults

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
