# Fine-tune DeepSeek-R1-Distill on your data. Every target sets up .venv first when needed.
#   make train RECIPE=medical [GPU=auto|cpu|4060|4090|<GB>] [ARGS="train.max_steps=100 ..."] [RESUME=1] [GPUS=N]
#   make plan RECIPE=medical GPU=4060   (predicted GPU memory and the fastest settings that fit; no GPU needed)
#   make grpo RECIPE=news [RUN=runs/<sft run>]  (GRPO after SFT)
#   make preview RECIPE=news          make eval / chat / gguf [RUN=runs/<run>]          make test
#   make webui [PORT=7860] [HOST=127.0.0.1 WEBUI_AUTH=user:password]
#   make serve [RUN=runs/<run>] [QUANT=q8_0] [PORT=8000] [HOST=0.0.0.0 API_KEY=<secret>]   (OpenAI-compatible API)
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
PORT ?=
HOST ?=

# The variables above reach the commands as data, never as shell text: each is taken as written ($(value): make
# expands nothing in it), exported, and read by trainer/makeargs.py, which builds the argument list (ARGS split
# into words like a shell would, without running anything). A new target is one entry in makeargs.TARGETS and
# `name: setup` with the recipe line `$(STAGE) name`; a new variable is added to USER_VARS too.
# HOST counts only when given on make's command line: some shells export a HOST (the machine's name) of their own.
ifneq ($(origin HOST),command line)
HOST :=
endif
USER_VARS := RECIPE GPU RUN ARGS QUANT GPUS N RESUME PORT HOST
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

.PHONY: setup setup-export train plan grpo preview eval chat gguf chat-gguf webui serve test bench clean

setup: $(VENV)/.core
setup-export: $(VENV)/.export

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# llama.cpp is compiled once, with cmake, progress shown (tools, llama-server and libllama into ~/.cache/r1-tune;
# about 10 minutes on 2 cores); llama-cpp-python is then installed without compiling its own copy and loads that
# library. CMAKE_ARGS (e.g. -DGGML_CUDA=ON) goes to that build. Only export, serve and their tests need it.
$(VENV)/.export: $(VENV)/.core
	$(PY) -m export setup
	$(PY) -m pip install --quiet -e ".[export]"
	touch $@

train: setup
	$(STAGE) train

# GRPO after SFT: continues RUN (default: the newest finished SFT run of RECIPE) with checkable rewards.
grpo: setup
	$(STAGE) grpo

plan: setup
	$(STAGE) plan

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

# The web UI starts the same commands as the targets above; export and GGUF chat need setup-export.
webui: setup-export
	$(STAGE) webui

# API_KEY is read from the environment by the server command itself.
serve: setup-export
	$(STAGE) serve

test: setup setup-export
	$(PY) -m pytest -q

bench: setup
	$(STAGE) bench

clean:
	rm -rf runs .pytest_cache
