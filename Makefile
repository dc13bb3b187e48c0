# The two commands of the README. Each creates .venv with the pinned dependencies if needed.
# any CPython 3.11 to 3.13
PYTHON ?= python3.11
# where torch comes from: empty for the package index (on Linux its build bundles CUDA, gigabytes);
# https://download.pytorch.org/whl/cpu for the CPU build (about 200 MB)
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCHREC_STAMP := $(VENV)/.torchrec

.PHONY: demo test lint setup setup-torchrec clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[serve,dev,tracking]'
	touch $(STAMP)

setup: $(STAMP)

# Optional: TorchRec for train.embedding_sharding (docs/distributed.md). fbgemm-gpu-cpu and the small
# packages TorchRec imports come pinned from the 'torchrec' extra; torchrec itself without its declared
# dependencies, which name the CUDA fbgemm-gpu (gigabytes). torch stays the pinned CPU build.
$(TORCHREC_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[serve,dev,tracking,torchrec]'
	$(BIN)/pip install --quiet --no-deps torchrec==1.8.0
	touch $(TORCHREC_STAMP)

setup-torchrec: $(TORCHREC_STAMP)

demo: $(STAMP)
	$(BIN)/mtrec demo --out reports/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) reports runs
