# Two entry points: `make run` (quickstart on the embedded testbed) and `make test`.
# Both create .venv on first use: one environment with everything, the neural codecs (compressai) included.
# TORCH is the torch/torchvision pair, installed first; it must be a released pair whose compiled ops load
# together (compressai imports torchvision; a CUDA torchvision beside a CPU torch fails at import).
# The default is PyPI's CUDA build (~6 GB; it runs on CPU-only machines too). Where download.pytorch.org
# is reachable, TORCH_INDEX=--index-url https://download.pytorch.org/whl/cpu gets the CPU pair instead.
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.hilbed-installed

.PHONY: run test test-fast test-neural venv clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) $(TORCH_INDEX)
	$(PY) -m pip install -q -e '.[test]'
	@$(PY) -W ignore -c "import torchvision, compressai.entropy_models" || { \
	  echo "torch and torchvision in $(VENV) do not load together (TORCH='$(TORCH)'); see docs/neural-codecs.md"; exit 1; }
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/hilbed run

# pytest exits 5 when it collected no tests; that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The unit tests only (no end-to-end runs, no network namespaces): the quick loop while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not netns" -n auto -p no:randomly; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The neural-codec tests alone, in the same environment (`make test` runs them too).
test-neural: $(STAMP)
	$(PY) -m pytest -q tests/nodes/codecs/test_codec_pnc.py tests/nodes/codecs/test_codec_entropic.py

# .venv-neural was the second environment before there was one; remove it where it is left over.
clean-venv:
	rm -rf $(VENV) .venv-neural
