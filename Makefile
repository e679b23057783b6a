PYTHON ?= .venv/bin/python
PORT ?= 8000

.PHONY: run test check bench install lock

.venv/.installed: pyproject.toml constraints.txt
	test -d .venv || python3 -m venv .venv
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[dev]'
	touch .venv/.installed

install: .venv/.installed

run: install
	PORT=$(PORT) $(PYTHON) -m service serve

test: install
	$(PYTHON) -m pytest

check: install
	$(PYTHON) -m ruff check service tests bench
	$(PYTHON) -m ruff format --check service tests bench
	$(PYTHON) -m mypy

bench: install
	$(PYTHON) -m bench.bench_requests

lock: install
	$(PYTHON) -m pip freeze --exclude-editable > constraints.txt
