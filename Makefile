# Two-command workflow: `make demo` sets up and runs the SimCLRv2 pipeline on
# the embedded digits, `make test` runs the suite. Both create .venv on first
# use. `make bench` measures speed (writes bench/results.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test files are spread over this many processes (pytest-xdist; a file's
# module fixtures stay in one process). 0 runs everything in this process.
TEST_WORKERS ?= 2

.PHONY: install test demo study study-fashion bench bench-input fashion-mnist clean
# Optional: the tf2/ folder of a google-research/simclr checkout, timed side by
# side by `make bench`.
PUBLISHED_TF2_DIR ?=

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest tests $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) --durations=25 $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) tools/demo.py

# SimCLRv2's own claims on the digits (docs/study.md); resumable: run it
# again after an interruption and it continues.
study: $(VENV)/.installed
	$(PY) tools/study.py

# The same on Fashion-MNIST (docs/study_fashion_mnist.md): installs Debian's
# dataset-fashion-mnist when it can, then runs about an hour per seed on 2
# cores; resumable the same way. Writes study_fashion_out/.
study-fashion: $(VENV)/.installed fashion-mnist
	$(PY) tools/study.py --dataset=fashion_mnist

bench: $(VENV)/.installed
	$(PY) tools/bench.py $(if $(PUBLISHED_TF2_DIR),--published_tf2_dir=$(PUBLISHED_TF2_DIR))

bench-input: $(VENV)/.installed
	$(PY) tools/bench_input.py

# Fashion-MNIST's four original files from Debian's dataset-fashion-mnist
# package; --dataset=fashion_mnist prepares the TFDS dataset from them on first
# use. Not part of `make test` (the tests write their own small files).
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
	t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

fashion-mnist:
	@if ls $(addprefix $(FASHION_MNIST_DIR)/,$(FASHION_MNIST_FILES)) >/dev/null 2>&1; then \
	  echo "Fashion-MNIST's files are in $(FASHION_MNIST_DIR)/ already."; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  apt-cache show dataset-fashion-mnist >/dev/null 2>&1 || $$sudo apt-get update; \
	  $$sudo apt-get install -y dataset-fashion-mnist; \
	else \
	  echo "No apt-get here: put the four original Fashion-MNIST files ($(FASHION_MNIST_FILES))"; \
	  echo "in a directory and set SIMCLR_FASHION_MNIST_DIR to it, or prepare fashion_mnist with TFDS"; \
	  echo "on a machine with internet and copy its data_dir."; \
	  exit 1; \
	fi

clean:
	rm -rf $(VENV) demo_out study_out study_fashion_out
