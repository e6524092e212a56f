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
# The kernel runs in notebooks/: a relative RESULTS_DIR=results/x would land in notebooks/results/x
override RESULTS_DIR := $(abspath $(RESULTS_DIR))
KERNEL := $(VENV)/share/jupyter/kernels/rust/kernel.json

# The small configuration the notebook tests run in.
TEST_ENV := EPOCHS=1 TRAIN_SIZE=2000 BATCH_SIZE=128 SEED=0 RESULTS_DIR=$(CURDIR)/target/notebook-results

.PHONY: test test-crate test-notebooks notebook improving lab bench bench-peers keras-reference setup cuda-check gpu-pack clean

## test: crate tests, then the notebooks on the real CIFAR-10 (when CIFAR10_DIR is set)
test: test-crate test-notebooks test-browser

test-crate:
	cargo test --workspace

test-notebooks: setup
	@if [ -z "$${CIFAR10_DIR:-}" ] && [ -n "$${CI:-}" ] && [ "$${CI:-}" != false ]; then \
	  echo "CIFAR10_DIR is not set, and CI always has the real CIFAR-10: set it (.ci/run does)"; exit 1; \
	elif [ -z "$${CIFAR10_DIR:-}" ]; then \
	  echo "CIFAR10_DIR is not set: SKIPPING the notebook runs (they need a local CIFAR-10; tests never download)"; \
	else \
	  $(VENV)/bin/python scripts/warm-kernel.py && \
	  $(TEST_ENV) $(VENV)/bin/python tests/run_notebooks.py --fresh --timeout 1800; \
	fi

## test-browser: the main notebook run in JupyterLab in headless Chromium (Debian's
# /usr/bin/chromium, driven by Playwright; nothing downloads a browser), checked in the
# page; the screenshot goes to target/notebook-results/jupyterlab.png
CHROMIUM := /usr/bin/chromium
.PHONY: test-browser
test-browser: setup
	@if [ -z "$${CIFAR10_DIR:-}" ] && [ -n "$${CI:-}" ] && [ "$${CI:-}" != false ]; then \
	  echo "CIFAR10_DIR is not set, and CI always has the real CIFAR-10: set it (.ci/run does)"; exit 1; \
	elif [ -z "$${CIFAR10_DIR:-}" ]; then \
	  echo "CIFAR10_DIR is not set: SKIPPING the browser test (it needs a local CIFAR-10; tests never download)"; \
	elif [ ! -x $(CHROMIUM) ]; then \
	  echo "$(CHROMIUM) is missing: the browser test needs Debian's chromium (apt-get install chromium)"; exit 1; \
	else \
	  $(TEST_ENV) $(VENV)/bin/python tests/browser_test.py --timeout 1800; \
	fi

## improving: the sequel notebook with its defaults (five runs of 25 epochs; finished runs
# in $(RESULTS_DIR)/improving are loaded, not trained again)
improving: setup
	RESULTS_DIR=$(RESULTS_DIR) $(VENV)/bin/python tests/run_notebooks.py --timeout 14400 --out $(RESULTS_DIR) notebooks/improving.ipynb

## notebook: the main job, the article's defaults; the executed copy goes to results/
notebook: setup
	mkdir -p $(RESULTS_DIR)
	RESULTS_DIR=$(RESULTS_DIR) $(VENV)/bin/python tests/run_notebooks.py --timeout 14400 --out $(RESULTS_DIR) notebooks/cifar10_cnn.ipynb

## lab: JupyterLab with the Rust kernel
# First the notebooks' set-up cell is built in the kernel's build folder
# (scripts/warm-kernel.py, showing each crate as it compiles: minutes the first
# time, seconds after), so that the first cell in the browser answers in seconds.
# A failed warm-up does not stop JupyterLab: the notebook shows the same error.
# Jupyter refuses to start as root unless told: containers often run as root,
# so there it is told (and says so).
lab: setup
	$(VENV)/bin/python scripts/warm-kernel.py || echo "warm-kernel failed: starting JupyterLab anyway"
	@if [ "$$(id -u)" = 0 ]; then echo "running as root (as in most containers): starting JupyterLab with --allow-root"; fi
	$(VENV)/bin/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks

## bench: the article's training step and inference, release build, one JSON line
# (BENCH_ARGS=--batch-norm: with a BatchNormalization after each convolution)
BENCH_ARGS ?=
bench:
	cargo run --release -q -p cifar10-cnn -- bench $(BENCH_ARGS)

## bench-peers: the crate, Keras/TensorFlow and PyTorch (CPU) in turn, ROUNDS rounds in one
# window, the same JSON line each; then the CPU's name and the crate's ratios to each peer
PEERS_VENV ?= .venv-peers
ROUNDS ?= 3
bench-peers: $(PEERS_VENV)/.installed
	cargo build --release -q -p cifar10-cnn
	$(PEERS_VENV)/bin/python tests/bench_peers.py --ours "cargo run --release -q -p cifar10-cnn --" --rounds $(ROUNDS) $(BENCH_ARGS)

## keras-reference: the article's own Keras program on the same CIFAR-10 (CPU, 25 epochs)
SEED ?= 0
keras-reference: $(PEERS_VENV)/.installed
	@test -n "$${CIFAR10_DIR:-}" || { echo "set CIFAR10_DIR to the CIFAR-10 binary version"; exit 1; }
	$(PEERS_VENV)/bin/python tests/keras_reference.py --data $$CIFAR10_DIR --seed $(SEED) --out $(RESULTS_DIR)/keras-seed$(SEED)

$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q numpy torch tensorflow-cpu
	touch $@

## cuda-check: the CUDA build compiles, on a machine without a GPU or a CUDA installation.
# NVIDIA's compiler and headers come from PyPI into .venv-cuda. CUDA 13.0 rather than
# the newest: candle compiles its kernels to PTX, which a driver can only load if it is
# at least as new as the compiler (13.0 is the 580 driver series).
CUDA_VENV ?= .venv-cuda
CUDA_VERSION := 13.0.88
CUDA_WHEELS := nvidia-cuda-nvcc==$(CUDA_VERSION) nvidia-cuda-crt==$(CUDA_VERSION) nvidia-nvvm==$(CUDA_VERSION) \
	nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
CUDA_COMPUTE_CAP ?= 90
CUDA_ENV = cu=$$(echo $(CURDIR)/$(CUDA_VENV)/lib/python3*/site-packages/nvidia/cu13); \
	export PATH=$$cu/bin:$$PATH CUDA_ROOT=$$cu CUDA_PATH=$$cu CUDA_HOME=$$cu CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP);
cuda-check: $(CUDA_VENV)/.installed
	$(CUDA_ENV) cargo build --release -p cifar10-cnn --lib --features cuda --target-dir target/cuda

$(CUDA_VENV)/.installed:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q $(CUDA_WHEELS)
	touch $@

## gpu-pack: what scripts/gpu-check.sh and scripts/gpu-profile.sh need on a GPU machine, in gpu-check/ (about 30 MiB):
# the CLI built with CUDA (xz-compressed: 57 MiB of it is mostly GPU code), and 5,000 training and 2,000 test images of the real CIFAR-10
# (from CIFAR10_DIR). Linking needs cuBLAS, cuRAND and NVRTC (PyPI wheels, 1 GB) and the
# driver's libcuda, for which a stub is made from cudarc's declarations; the GPU machine
# brings the real libraries.
CUDA_LINK_WHEELS := nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==$(CUDA_VERSION)
GPU_PACK ?= gpu-check
# The improving notebook's final recipe, which scripts/gpu-profile.sh times too.
FINAL_RECIPE := docs/results/improving/5-label-smoothing-test-time-flips/recipe.json
gpu-pack: $(CUDA_VENV)/.installed $(CUDA_VENV)/.installed-link
	@test -n "$${CIFAR10_DIR:-}" || { echo "set CIFAR10_DIR to the CIFAR-10 binary version (for the real sample)"; exit 1; }
	$(CUDA_ENV) scripts/libcuda-stub.sh target/cuda/stub && \
	LIBRARY_PATH=$$cu/lib:$(CURDIR)/target/cuda/stub \
	cargo build --release -p cifar10-cnn --features cuda --target-dir target/cuda
	mkdir -p $(GPU_PACK)
	strip -o target/cuda/cifar10-cnn-stripped target/cuda/release/cifar10-cnn
	xz -6 -T2 -c target/cuda/cifar10-cnn-stripped > $(GPU_PACK)/cifar10-cnn.xz
	head -c $$((5000 * 3073)) $$CIFAR10_DIR/data_batch_1.bin > $(GPU_PACK)/sample_train.bin
	head -c $$((2000 * 3073)) $$CIFAR10_DIR/test_batch.bin > $(GPU_PACK)/sample_test.bin
	cp scripts/gpu-check.sh scripts/gpu-profile.sh tests/bench_peers.py $(GPU_PACK)/
	cp $(FINAL_RECIPE) $(GPU_PACK)/final-recipe.json
	du -sh $(GPU_PACK)

$(CUDA_VENV)/.installed-link: $(CUDA_VENV)/.installed
	$(CUDA_VENV)/bin/python -m pip install -q $(CUDA_LINK_WHEELS)
	cu=$$(echo $(CURDIR)/$(CUDA_VENV)/lib/python3*/site-packages/nvidia/cu13/lib); \
	for lib in cudart cublas cublasLt curand nvrtc; do ln -sf $$(ls $$cu/lib$$lib.so.* | head -1) $$cu/lib$$lib.so; done
	touch $@

setup: $(VENV)/.installed $(KERNEL) $(VENV)/.kernel-env

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
	JUPYTER_PATH=$(abspath $(VENV))/share/jupyter $(EVCXR) --install

# The kernel starts through scripts/rust-kernel, which gives it a build folder
# that outlives it (target/evcxr/<slot>), so that a restarted kernel finds the
# crate built. evcxr runs the cells with RUST_BACKTRACE=1, so an error shown
# with the notebooks' `:efmt {:?}` would end in a stack backtrace;
# RUST_LIB_BACKTRACE=0 in the kernel's environment keeps backtraces off errors
# (panics keep theirs).
$(VENV)/.kernel-env: $(KERNEL) scripts/set-kernel.py
	$(VENV)/bin/python scripts/set-kernel.py $(KERNEL) $(CURDIR)/scripts/rust-kernel $(EVCXR)
	touch $@

clean:
	rm -rf $(VENV) target/notebooks target/notebook-results target/evcxr
