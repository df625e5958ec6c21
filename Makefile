# Two entry points a new user needs: `make demo` and `make test` (`make test-fast`: the quick loop while working).
# Each creates the virtualenv and installs unravel into it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# glibc malloc otherwise mmaps and page-faults every large activation on CPU (2-3x slower).
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/unravel run experiments/digits.yaml

# two pytest-xdist workers (the Ray tests wait on subprocesses much of the time); by load: `--dist loadgroup`
# (each shared sweep once, on one worker) measured 19.5 min on a fresh clone here, by load 16.5 min
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# every test but those marked slow (each starts Ray or a process, or takes many seconds alone)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
