# Two entry points a new user needs: `make demo` and `make test`.
# Each creates the virtualenv and installs unravel into it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# glibc malloc otherwise mmaps and page-faults every large activation on CPU (2-3x slower).
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/unravel run experiments/digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2  # two pytest-xdist workers: the Ray tests wait on subprocesses much of the time

clean:
	rm -rf $(VENV) .pytest_cache
