# Two entry points: `make run` (quickstart on the embedded testbed) and `make test`.
# Both create .venv on first use. TORCH pins the torch wheel (a CPU build is enough).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hilbed-installed

.PHONY: run test venv clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/hilbed run

# pytest exits 5 when it collected no tests; that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
