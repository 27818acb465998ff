# `make run` and `make test` each set up .venv on a fresh machine first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean mutants

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m synth $(ARGS)

# The suite on every core (pytest-xdist; every test works in its own tmp_path). PYTEST_ARGS='-n 0': serial.
PYTEST_ARGS ?= -n auto
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Mutation testing of the modules that carry guarantees (setup.cfg [mutmut]); slow, not in CI.
# One module: make mutants MUTANTS='synth.params*'. Then: .venv/bin/mutmut results / show NAME.
MUTANTS ?=
mutants: $(STAMP)
	$(VENV)/bin/mutmut run $(if $(MUTANTS),'$(MUTANTS)')
	$(VENV)/bin/mutmut results

bench: $(STAMP)
	$(PY) -m synth.bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
