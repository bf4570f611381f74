# `make run` starts the engine with the bundled channels; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# NHS England's MESH sandbox, the tests' MESH peer, pins its own FastAPI: it gets a virtualenv of its own.
MESH_SANDBOX_VENV ?= .venv-mesh-sandbox
MESH_SANDBOX_STAMP := $(MESH_SANDBOX_VENV)/.installed
MESH_SANDBOX_SPEC ?= mesh-sandbox>=1.0.137,<2

.PHONY: install run test lint bench bench-mesh bench-fhir

install: $(STAMP) $(MESH_SANDBOX_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(MESH_SANDBOX_STAMP):
	$(PYTHON) -m venv $(MESH_SANDBOX_VENV)
	$(MESH_SANDBOX_VENV)/bin/python -m pip install --quiet '$(MESH_SANDBOX_SPEC)'
	touch $(MESH_SANDBOX_STAMP)

run: install
	$(PY) run.py serve

# One test worker per core by default; TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= auto

test: install
	$(PY) -m pytest -n $(TEST_WORKERS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/mllp.py

bench-mesh: install
	$(PY) bench/mesh.py

bench-fhir: install
	$(PY) bench/fhir.py
