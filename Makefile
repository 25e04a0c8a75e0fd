# The two commands of the README: `make demo` (main job, embedded SQLite) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The runtime alone (what `make demo` and `make serve` need); the dev tools (pytest, mypy, ruff,
# py-spy…) come on top of it for `make test` and `make lint`.
RUNTIME := $(VENV)/.installed-runtime
PG_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test

.PHONY: demo test test-postgres lint proto proto-check bench bench-guard serve

$(RUNTIME): pyproject.toml constraints.txt
	@echo "==> first run: creating $(VENV) and installing wapi-guard's runtime dependencies (about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -c constraints.txt -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	@echo "==> installing the development tools (pytest, mypy, ruff, …) into $(VENV)"
	$(BIN)/pip install --progress-bar on -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/wapi-guard demo

serve: $(RUNTIME)
	$(BIN)/wapi-guard serve

test: $(STAMP)
	$(BIN)/pytest -q

test-postgres: $(STAMP)
	WAPIGUARD_TEST_DATABASE_URL=$(PG_URL) $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports
	# No import cycle, no oversized module/class/function without a written reason (docs/architecture.md).
	$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_code_shape.py

proto: $(STAMP)
	$(BIN)/python proto/generate.py

proto-check: $(STAMP)
	$(BIN)/python proto/generate.py --check

bench: $(STAMP)
	$(BIN)/python -m bench

# The hot paths' ratio to the no-op against bench/figures.json (CI; well under 2 minutes).
bench-guard: $(STAMP)
	$(BIN)/python -m bench.guard
