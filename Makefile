# `make repro` sets up a virtual environment and runs the DVC pipeline; `make test` runs the tests.
# Without internet, point NORMCMP_DATA_DIR at a folder holding the four MNIST IDX .gz files:
#   make repro NORMCMP_DATA_DIR=/path/to/mnist NORMCMP_MNIST_C_DIR=/path/to/mnist_c
# and, for download.dataset: fashion-mnist, NORMCMP_FASHION_MNIST_DIR at the Fashion-MNIST files.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# Stage commands call `python`: make it the environment's.
export PATH := $(abspath $(BIN)):$(PATH)
# DVC and DVCLive would otherwise try to send usage statistics.
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
ifneq ($(strip $(NORMCMP_DATA_DIR)),)
# Absolute, so that stages run by `dvc exp run` in a temporary copy find it too (`override`: a value given
# on the make command line would otherwise win over this one, and stay relative).
override NORMCMP_DATA_DIR := $(abspath $(NORMCMP_DATA_DIR))
export NORMCMP_DATA_DIR
endif
ifneq ($(strip $(NORMCMP_MNIST_C_DIR)),)
override NORMCMP_MNIST_C_DIR := $(abspath $(NORMCMP_MNIST_C_DIR))
export NORMCMP_MNIST_C_DIR
endif
ifneq ($(strip $(NORMCMP_FASHION_MNIST_DIR)),)
override NORMCMP_FASHION_MNIST_DIR := $(abspath $(NORMCMP_FASHION_MNIST_DIR))
export NORMCMP_FASHION_MNIST_DIR
endif

# The write-up's recipe (docs/yardstick.md) as overrides of params.yaml for `dvc exp run`.
WRITEUP_RECIPE := -S model.arch=writeup -S train.batch_size=64 -S train.lr=0.015 -S train.pct_start=0.3 \
	-S train.momentum=0.95 -S train.cycle_momentum=true -S train.nesterov=false -S train.brightness=0.4 \
	-S train.contrast=0.4 -S train.label_smoothing=0.0 -S train.grad_clip=0.0 -S variants.bn_l1.l1_tensor_mean=true \
	-S train.loader=torchvision
# Seeds of `make seeds` (seed 1 is the committed run) and `make yardstick`.
SEEDS ?= 2,3,4,5
# The commit their experiments branch from, read at start: the table finds them there even if HEAD moves meanwhile.
BASELINE := $(shell git rev-parse HEAD 2>/dev/null)
# How `make seeds` and `make yardstick` run their experiments: RUNNER=dvc, DVC's queue, one at a time on this
# machine; RUNNER=ray, `python -m tools.sweep` (docs/sweeps.md): one Ray task each, on a local cluster or, with
# RAY_ARGS='--address HEAD_IP:6379', on several machines, e.g. `make seeds RUNNER=ray RAY_ARGS='--workers 2'`.
RUNNER ?= dvc
RAY_ARGS ?=
ifeq ($(RUNNER),dvc)
run_experiments = $(BIN)/dvc exp run --queue $(1) && $(BIN)/dvc exp run --run-all -j 1
else ifeq ($(RUNNER),ray)
run_experiments = $(BIN)/python -m tools.sweep $(1) $(RAY_ARGS)
else
$(error RUNNER is dvc or ray, not '$(RUNNER)')
endif
# Ray, a large package, only where it runs: the tests and RUNNER=ray.
RUNNER_SETUP := $(if $(filter ray,$(RUNNER)),$(VENV)/.sweep-installed)

.PHONY: setup repro test lint bench seeds yardstick study mutants clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.sweep-installed: requirements-sweep.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-sweep.txt
	touch $@

repro: setup
	$(BIN)/dvc repro
	$(BIN)/python -m tools.results

test: setup $(VENV)/.sweep-installed
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests tools benchmarks

# Each precision in a process of its own: the exact path caps the CPU kernels before the first tensor operation.
bench: setup
	$(BIN)/python -m benchmarks.throughput --precision exact --profile $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.throughput --precision fast --profile $(BENCH_ARGS)

# One DVC experiment per seed of SEEDS, run by RUNNER (queued and run one after the other by default); then their
# rows merged into results/seeds.csv (commit it) and the table of our recipe against the write-up's.
seeds: setup $(RUNNER_SETUP)
	$(call run_experiments,-S 'train.seed=$(SEEDS)')
	$(BIN)/python -m tools.seed_table --save results/seeds.csv --rev $(BASELINE)

yardstick: SEEDS = 1,2,3,4,5
yardstick: setup $(RUNNER_SETUP)
	$(call run_experiments,$(WRITEUP_RECIPE) -S 'train.seed=$(SEEDS)')
	$(BIN)/python -m tools.seed_table --save results/seeds.csv --rev $(BASELINE)

# The per-device study (studies/per_device/dvc.yaml; about 80 minutes on 2 CPU cores), then its figure's numbers.
study: setup
	$(BIN)/dvc repro studies/per_device/dvc.yaml
	$(BIN)/python -m tools.results --study

# Mutation testing (docs/mutation.md): a module where a wrong number would pass unnoticed, mutated one change at a
# time (not its strings: messages and docstrings), against the unit tests that exercise it; then the score and the
# surviving mutants. mutmut counts a mutant as caught only when the tests exit with status 1: `|| exit 1` counts
# pytest's 2 too (a mutant that cannot even be imported, `*args` made `/args`). Not part of `make test`; several
# minutes per 100 mutants on 2 CPU cores; other modules with MUTANTS='src/data.py=tests/test_data.py ...'.
MUTANTS ?= src/augment.py=tests/test_augment.py src/model.py='tests/test_model.py tests/test_engine.py'
mutants: setup
	@for pair in $(MUTANTS); do \
	  path=$${pair%%=*}; tests=$${pair#*=}; \
	  $(BIN)/mutmut run --CI --paths-to-mutate $$path --disable-mutation-types string,fstring \
	    --runner "sh -c 'python -m pytest -x -q -p no:cacheprovider -k \"not fresh_process\" $$tests || exit 1'" || exit 1; \
	done
	$(BIN)/python -m tools.mutation_score

clean:
	rm -rf $(VENV) .mutmut-cache
