# The two commands of the README. Each one sets up a fresh machine first (a local virtualenv).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test

demo: $(VENV)/.installed
	$(VENV)/bin/dubflow demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# torch is installed first and pinned: 2.13.0 is the CPU wheel this kind of machine carries,
# and once it is present nothing else pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@
