# Fine-tune DeepSeek-R1-Distill on your data. Every target sets up .venv first when needed.
#   make train RECIPE=medical [GPU=auto|4060|4090|cpu] [ARGS="train.max_steps=100 ..."] [RESUME=1] [GPUS=N]
#   make preview RECIPE=news          make eval / chat / gguf [RUN=runs/<run>]          make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= medical
GPU ?= auto
RUN ?= latest
ARGS ?=
QUANT ?=
GPUS ?=
N ?=
RESUME ?=

# The variables above reach the commands as data, never as shell text: each is taken as written ($(value): make
# expands nothing in it), exported, and read by trainer/makeargs.py, which builds the argument list (ARGS split
# into words like a shell would, without running anything). A new target is one entry in makeargs.TARGETS and
# `name: setup` with the recipe line `$(STAGE) name`; a new variable is added to USER_VARS too.
USER_VARS := RECIPE GPU RUN ARGS QUANT GPUS N RESUME
$(foreach v,$(USER_VARS),$(eval override $(v) := $$(value $(v))))
export $(USER_VARS)
STAGE = $(PY) -m trainer.makeargs

# On a CPU every step allocates and frees logits 151,936 tokens wide; by default glibc hands those blocks back to
# the kernel and faults them in again each time (40% of the time in system calls). Keeping them in the heap makes
# tiny-model training and evaluation about 1.5-2x faster. Set GLIBC_TUNABLES yourself to override.
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.top_pad=1073741824

comma := ,
CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := dev$(if $(CUDA),$(comma)gpu)

.PHONY: setup setup-export train preview eval chat gguf chat-gguf test bench clean

setup: $(VENV)/.core
setup-export: $(VENV)/.export

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# llama-cpp-python compiles llama.cpp (several minutes, once); only export and its tests need it.
$(VENV)/.export: $(VENV)/.core
	CMAKE_ARGS="-DGGML_NATIVE=OFF $(CMAKE_ARGS)" $(PY) -m pip install --quiet -e ".[export]"
	touch $@

train: setup
	$(STAGE) train

preview: setup
	$(STAGE) preview

eval: setup
	$(STAGE) eval

chat: setup
	$(STAGE) chat

gguf: setup-export
	$(STAGE) gguf

chat-gguf: setup-export
	$(STAGE) chat-gguf

test: setup setup-export
	$(PY) -m pytest -q

bench: setup
	$(STAGE) bench

clean:
	rm -rf runs .pytest_cache
