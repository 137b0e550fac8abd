# portrait-pipeline: `make demo` sets everything up and makes portraits offline; `make test` checks it all.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export PORTRAIT_RENDERER ?= auto

.PHONY: install install-dev migrate demo ui test lint typecheck pytest clean

# What running needs (`make demo`, `make ui`); the test tools (Playwright, SeaweedFS, ruff, mypy) only for `make test`.
$(BIN)/portrait-pipeline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.dev-tools: $(BIN)/portrait-pipeline
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/portrait-pipeline $(DAGSTER_HOME)/dagster.yaml

install-dev: install $(VENV)/.dev-tools

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

# From DAGSTER_HOME, so the production dagster.yaml at the repo root is not mistaken for this instance's; `dg dev`
# (which `dagster dev` advises) needs the dg CLI, which this project does not install.
UI_PORT ?= 3000
ui: migrate
	cd $(DAGSTER_HOME) && PYTHONWARNINGS="ignore:Function \`dev_command\` is superseded" \
		$(CURDIR)/$(BIN)/dagster dev -h 127.0.0.1 -p $(UI_PORT) -w $(CURDIR)/workspace.yaml

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy portrait_pipeline tests $(wildcard bench)

# Two workers (pytest-xdist): much of the suite waits on servers and subprocesses, not on the 2 CPUs.
TEST_WORKERS ?= 2
pytest: install-dev
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

clean:
	rm -rf .portraits .dagster
