# The two contracts of the README: `make demo` and `make test`. Both set everything up from scratch.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.otov3-installed

.PHONY: setup sysdeps datadeps test demo lint bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Graphviz renders the graph pictures (DOT only without it); the Fashion-MNIST files feed the demo.
# Both are Debian packages; installing them needs root, and everything degrades gracefully without.
sysdeps:
	@command -v dot >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq graphviz) >/dev/null 2>&1 \
	  || echo "note: could not install graphviz; graph pictures will be DOT only"; }

datadeps:
	@test -d /usr/share/datasets/fashion-mnist || { (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: could not install dataset-fashion-mnist; run: make demo DEMO_ARGS='--data DIR' (DIR holds the IDX files)"; }

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

test: setup sysdeps datadeps lint
	$(PY) -m pytest -q -p no:cacheprovider

# Extra flags for the demo, e.g. make demo DEMO_ARGS="--data ~/fashion-mnist --epochs 4"
DEMO_ARGS ?=
demo: setup sysdeps datadeps
	$(VENV)/bin/otov3 demo --out runs/demo $(DEMO_ARGS)

# Every benchmark, one after the other (each prints a table; figures go to benchmarks/RESULTS.md by hand).
bench: setup
	$(PY) benchmarks/search_space.py
	$(PY) benchmarks/optimizer_overhead.py
	$(PY) benchmarks/subnet_latency.py
