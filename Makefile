# portrait-pipeline: `make demo` sets everything up and makes portraits offline; `make test` checks it all.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export PORTRAIT_RENDERER ?= auto

.PHONY: install migrate demo ui test lint typecheck pytest clean

$(BIN)/portrait-pipeline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/portrait-pipeline $(DAGSTER_HOME)/dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: dagster.dev.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.dev.yaml $@

migrate: install
	$(BIN)/portrait-pipeline db upgrade

demo: migrate
	$(BIN)/portrait-pipeline players import data/demo_roster.csv
	PORTRAIT_RENDERER=offline $(BIN)/portrait-pipeline generate --draft-year 2025 --style default --run-key demo_2025
	@echo
	@echo "Images: $${IMAGE_LOCAL_DIR:-$(CURDIR)/.portraits/images}/players/  (history under portraits/)"
	@echo "Open the Dagster UI with: make ui   (then http://127.0.0.1:3000, asset player_portraits)"

ui: migrate
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy portrait_pipeline tests $(wildcard bench)

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf .portraits .dagster
