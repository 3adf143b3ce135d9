# Two commands: `make demo` (the main job) and `make test` (every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml setup.py $(wildcard */*/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rtml demo $(if $(DURATION),--duration $(DURATION),)

# Starts its own embedded Kafka (Tansu) and Redis on free loopback ports.
test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.ingest

clean:
	rm -rf $(VENV) .rtml .pytest_cache
