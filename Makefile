# Two entry points: `make run` (quickstart on the embedded testbed) and `make test`.
# Both create .venv on first use. TORCH pins the torch wheel (a CPU build is enough).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hilbed-installed

.PHONY: run test test-fast venv clean-venv test-neural

# The neural codecs (PNC fitting/decoding, entropic student) in their own venv: compressai needs numpy<2.
# NEURAL_TORCH_INDEX=--index-url https://download.pytorch.org/whl/cpu gets CPU wheels instead of the CUDA build (~5 GB).
NEURAL_VENV        ?= .venv-neural
NEURAL_TORCH       ?= torch==2.14.1 torchvision==0.29.1
NEURAL_TORCH_INDEX ?=
NEURAL_STAMP       := $(NEURAL_VENV)/.hilbed-installed

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

# The unit tests only (no end-to-end runs, no network namespaces): the quick loop while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not netns" -p no:randomly; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

$(NEURAL_STAMP): pyproject.toml
	$(PYTHON) -m venv $(NEURAL_VENV)
	$(NEURAL_VENV)/bin/python -m pip install -q --upgrade pip
	$(NEURAL_VENV)/bin/python -m pip install -q $(NEURAL_TORCH) $(NEURAL_TORCH_INDEX)
	$(NEURAL_VENV)/bin/python -m pip install -q -e '.[test,neural]'
	touch $(NEURAL_STAMP)

test-neural: $(NEURAL_STAMP)
	$(NEURAL_VENV)/bin/python -m pytest -q tests/nodes/codecs/test_codec_pnc.py tests/nodes/codecs/test_codec_entropic.py

clean-venv:
	rm -rf $(VENV)
