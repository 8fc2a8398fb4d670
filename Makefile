# The two commands of the README.  Each creates .venv and installs what it needs
# on first use (python3 with venv and a C compiler are all a fresh machine needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench-check clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard _cext/*.pyx _cext/*.pxd)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,cuda]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/numbaloss demo

# the CUDA kernels run under Numba's CUDA simulator in a process of their own (the
# variable must be set before Numba is imported); on a GPU machine run tests/cuda
# without it
test: $(VENV)/.installed
	$(PY) -m pytest -q tests --ignore=tests/cuda
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q tests/cuda

# one quick pass of the asv benchmarks (asv_benchmarks/, small inputs): fails when a
# benchmark fails, so a broken benchmark fails CI
bench-check: $(VENV)/.installed
	$(PY) asv_benchmarks/quick_check.py

clean:
	rm -rf $(VENV) build *.egg-info
