# Two commands set everything up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: run test install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m search.run --space spaces/transfer.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 tests $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cxr_tune search trainables analysis spaces tests bench
	$(BIN)/ruff format --check cxr_tune search trainables analysis spaces tests bench

clean:
	rm -rf $(VENV) .pytest_cache
