# archwatch — two commands for a new machine: `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup console-setup demo test test-fast lint kafka-fetch kafka-start kafka-stop clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# the web console's ECharts (npm) and, for its browser test, Debian's chromium + CJK font
console-setup: setup
	scripts/console-setup.sh

demo: setup
	$(BIN)/archwatch demo --dir demo-data

kafka-fetch:
	scripts/kafka.sh fetch

kafka-start: kafka-fetch
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

test: setup console-setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow and not kafka'

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf demo-data .pytest_cache tests/.cache
