# `make demo`: create .venv, install kerasft, run the built-in recipe.
# `make test`: create .venv, install kerasft with its test extra, run the test suite.
# `make test-fast`: the same without the end-to-end tests marked slow or serial.
# Both use ../shared/keras_home (MobileNet ImageNet weights) as Keras' cache when present,
# through a writable .keras_home/ of links (Keras ignores a KERAS_HOME it cannot write).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_MODELS := $(abspath ../shared/keras_home/models)

.PHONY: demo test test-fast clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

.keras_home/.linked:
	mkdir -p .keras_home/models
	if [ -d $(SHARED_MODELS) ]; then ln -sf $(SHARED_MODELS)/* .keras_home/models/; fi
	touch $@

demo: $(VENV)/.installed .keras_home/.linked
	KERAS_HOME=$(CURDIR)/.keras_home $(PY) -m kerasft.train

test: $(VENV)/.installed
	$(PY) -m pytest -q -rs --durations=15 --numprocesses=auto --maxprocesses=4 --dist=loadscope -m "not serial" tests
	$(PY) -m pytest -q -rs -m serial tests

# The in-process tests only: no end-to-end command-line runs, no clusters (about a minute).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -rs --numprocesses=auto --maxprocesses=4 --dist=loadscope -m "not slow and not serial" tests

clean:
	rm -rf $(VENV) .keras_home runs eval saved_models/*/
