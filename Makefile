# The two commands that matter:
#   make notebook   the main job: the article's notebook with its defaults
#   make test       the crate's tests, then every notebook run small, headless
# Both install what they need on first use (a Python venv with JupyterLab and
# nbclient, evcxr_jupyter, the Rust kernelspec).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
CARGO_HOME ?= $(HOME)/.cargo
EVCXR_VERSION := 0.22.0
EVCXR := $(CARGO_HOME)/bin/evcxr_jupyter
RESULTS_DIR ?= $(CURDIR)/results
KERNEL := $(VENV)/share/jupyter/kernels/rust/kernel.json

# The small configuration the notebook tests run in.
TEST_ENV := EPOCHS=1 TRAIN_SIZE=2000 BATCH_SIZE=128 SEED=0 RESULTS_DIR=$(CURDIR)/target/notebook-results

.PHONY: test test-crate test-notebooks notebook lab bench bench-peers setup cuda-check clean

## test: crate tests, then the notebooks on the real CIFAR-10 (when CIFAR10_DIR is set)
test: test-crate test-notebooks

test-crate:
	cargo test --workspace

test-notebooks: setup
	@if [ -z "$${CIFAR10_DIR:-}" ]; then \
	  echo "CIFAR10_DIR is not set: skipping the notebook runs (they need a local CIFAR-10; tests never download)"; \
	else \
	  $(TEST_ENV) $(VENV)/bin/python tests/run_notebooks.py --timeout 1800; \
	fi

## notebook: the main job, the article's defaults; the executed copy goes to results/
notebook: setup
	mkdir -p $(RESULTS_DIR)
	RESULTS_DIR=$(RESULTS_DIR) $(VENV)/bin/python tests/run_notebooks.py --timeout 14400 --out $(RESULTS_DIR) notebooks/cifar10_cnn.ipynb

## lab: JupyterLab with the Rust kernel
lab: setup
	$(VENV)/bin/jupyter lab notebooks

## bench: the article's training step and inference, release build, one JSON line
bench:
	cargo run --release -q -p cifar10-cnn -- bench

## bench-peers: the same model in PyTorch and Keras/TensorFlow (CPU), same JSON line
PEERS_VENV ?= .venv-peers
bench-peers: bench
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q numpy torch tensorflow-cpu
	$(PEERS_VENV)/bin/python tests/bench_peers.py

## cuda-check: the CUDA build compiles, on a machine without a GPU or a CUDA installation.
# NVIDIA's compiler and headers come from PyPI into .venv-cuda. cudarc 0.19 knows CUDA
# up to 13.4, so it is told to use the 13.4 API. This builds the library (candle's CUDA
# backend and its PTX kernels); linking the CLI also needs NVIDIA's libraries (cuBLAS,
# cuRAND, NVRTC, the driver), which a GPU machine has.
CUDA_VENV ?= .venv-cuda
CUDA_WHEELS := nvidia-cuda-nvcc==13.5.37 nvidia-cuda-crt==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6
CUDA_COMPUTE_CAP ?= 90
cuda-check: $(CUDA_VENV)/.installed
	cu=$$(echo $(CURDIR)/$(CUDA_VENV)/lib/python3*/site-packages/nvidia/cu13); \
	PATH=$$cu/bin:$$PATH CUDA_ROOT=$$cu CUDA_PATH=$$cu CUDA_HOME=$$cu \
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CUDARC_CUDA_VERSION=13040 \
	cargo build --release -p cifar10-cnn --lib --features cuda --target-dir target/cuda

$(CUDA_VENV)/.installed:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q $(CUDA_WHEELS)
	touch $@

setup: $(VENV)/.installed $(KERNEL)

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r tests/requirements.txt
	touch $@

$(EVCXR):
	@echo "installing evcxr_jupyter $(EVCXR_VERSION) (about 15 minutes on 2 cores, once)"
	cargo install --locked evcxr_jupyter@$(EVCXR_VERSION)

# The kernelspec goes into the venv, where its Jupyter looks first. rust-src
# only serves evcxr's completions, so a failure there does not stop anything.
$(KERNEL): $(EVCXR) $(VENV)/.installed
	rustup component add rust-src || echo "warning: could not add rust-src (only completions need it)"
	JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter $(EVCXR) --install

clean:
	rm -rf $(VENV) target/notebooks target/notebook-results
