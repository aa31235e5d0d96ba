# Two-command workflow: `make demo` sets up and runs the main job, `make test`
# runs the suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test demo bench-input clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) tf2/model_zoo.py --depths=18,50 --widths=1

bench-input: $(VENV)/.installed
	$(PY) tf2/bench_input.py

clean:
	rm -rf $(VENV) demo_out
