# rolebus: everything a fresh machine needs is installed from here (PyPI via pip,
# the Kafka jars via Maven at first `stack up`, Compose for the compose check and
# chromium for the dashboard page test via apt).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test unit bench stack-down clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rolebus needs Python >= 3.11 (PYTHON=python3.11 make ...)")'
	@echo "installing rolebus and its dependencies into $(VENV) ..." >&2
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check --progress-bar off -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## demo: start the embedded stack and run the main job
demo: $(STAMP)
	$(BIN)/rolebus demo

## test: lint, type check and the whole test suite (starts real Kafka + Postgres itself)
test: $(STAMP)
	scripts/ensure-compose
	scripts/ensure-chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

## bench: the benchmarks, each printing its ratio against a same-run baseline
bench: $(STAMP)
	@# Run every one even when an earlier one misses its goal; fail if any did.
	$(BIN)/python bench/produce.py; p=$$?; $(BIN)/python bench/fold.py; f=$$?; \
	$(BIN)/python bench/latency.py; l=$$?; $(BIN)/python bench/project.py; j=$$?; \
	$(BIN)/python bench/read_your_write.py; r=$$?; $(BIN)/python bench/recall.py; c=$$?; \
	exit $$((p || f || l || j || r || c))

stack-down: $(STAMP)
	$(BIN)/rolebus stack down

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache bench/results
