"""The auto defaults of `pretrain` (train/defaults.py): known answers for CPU and GPU, corpus-sized GPU runs."""

from __future__ import annotations

import pytest

from train.defaults import (
    CPU_AUTO_STEPS,
    GPU_BATCH_TOKENS,
    GPU_FALLBACK_STEPS,
    Corpus,
    count_parameters,
    gpu_batch_tokens,
    pretrain_config,
    read_corpus,
    resolve_auto,
)
from train.errors import TrainConfigError

#: gpt2-124m with a 50,304-row vocabulary: embedding 50,304 x 768 + 12 blocks of (4 x 768^2 attention,
#: 3 x 768 x 2,048 SwiGLU, 2 x 768 norm gains) + a final norm of 768.
GPT2_124M_PARAMS_50K = 50_304 * 768 + 12 * (4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768) + 768


def auto(device: str, corpus: Corpus | None = None, **changes):
    options = dict(preset="auto", device=device, steps=0, tokens=0, batch_tokens=0, micro_batch=0, seq_len=0,
                   lr=None, compile_=None, eval_every=None, eval_tokens=0, log_every=0, corpus=corpus, world_size=1)
    options.update(changes)
    return resolve_auto(**options)


def test_parameters_are_counted_without_building_the_weights():
    assert count_parameters("gpt2-124m", 50_257) == GPT2_124M_PARAMS_50K == 123_587_328


def test_cpu_defaults_stay_a_quick_fixed_run_whatever_the_corpus():
    r = auto("cpu", Corpus(train_tokens=10**10, vocab_size=16_384))
    assert (r.preset, r.steps, r.batch_tokens, r.micro_batch, r.compile) == ("small", CPU_AUTO_STEPS, 8 * 256, 8, False)
    assert (r.lr, r.eval_every, r.log_every) == (1e-3, 40, 1)


def test_a_large_corpus_on_a_gpu_trains_twenty_tokens_per_parameter_in_half_million_token_batches():
    r = auto("cuda", Corpus(train_tokens=10**10, vocab_size=50_257))
    assert (r.preset, r.micro_batch, r.compile, r.lr) == ("gpt2-124m", 32, True, 6e-4)
    assert r.batch_tokens == GPU_BATCH_TOKENS == 524_288
    assert r.steps == 20 * GPT2_124M_PARAMS_50K // 524_288 == 4714
    assert "20 tokens per parameter" in r.why_steps


def test_a_mid_sized_corpus_on_a_gpu_is_one_epoch_with_the_batch_halved_to_reach_300_steps():
    full = auto("cuda", Corpus(train_tokens=200_000_000, vocab_size=50_257))
    assert (full.batch_tokens, full.steps) == (524_288, 381)
    halved = auto("cuda", Corpus(train_tokens=100_000_000, vocab_size=50_257))
    assert (halved.batch_tokens, halved.steps) == (262_144, 381)
    assert "one epoch" in halved.why_steps


def test_a_small_corpus_on_a_gpu_uses_one_micro_batch_per_step_and_one_epoch():
    r = auto("cuda", Corpus(train_tokens=8_000_000, vocab_size=16_384))
    assert r.batch_tokens == 32 * 1024  # one micro-batch of 32 windows of 1,024 tokens
    assert r.steps == 8_000_000 // 32_768 == 244
    assert r.eval_every == 48


def test_the_batch_never_drops_below_one_micro_batch_on_every_rank():
    r = auto("cuda", Corpus(train_tokens=8_000_000, vocab_size=16_384), world_size=8)
    assert r.batch_tokens == 8 * 32 * 1024
    assert r.steps == 8_000_000 // 262_144
    assert gpu_batch_tokens(budget_tokens=10, micro_step_tokens=3 * 1024) == 3 * 1024
    assert gpu_batch_tokens(budget_tokens=10**12, micro_step_tokens=3 * 1024) % (3 * 1024) == 0


def test_explicit_steps_or_tokens_on_a_gpu_keep_the_full_batch():
    corpus = Corpus(train_tokens=8_000_000, vocab_size=16_384)
    by_steps = auto("cuda", corpus, steps=50)
    assert (by_steps.steps, by_steps.batch_tokens) == (50, GPU_BATCH_TOKENS)
    by_tokens = auto("cuda", corpus, tokens=10**9)
    assert (by_tokens.steps, by_tokens.batch_tokens) == (1908, GPU_BATCH_TOKENS)  # ceil(1e9 / 524,288)
    with pytest.raises(TrainConfigError, match="--tokens"):
        auto("cuda", corpus, steps=5, tokens=5)


def test_an_unknown_corpus_on_a_gpu_falls_back_to_a_fixed_number_of_steps():
    r = auto("cuda", None)
    assert (r.steps, r.batch_tokens) == (GPU_FALLBACK_STEPS, GPU_BATCH_TOKENS)


def test_given_options_win_over_the_auto_values():
    r = auto("cuda", Corpus(train_tokens=10**10, vocab_size=50_257), preset="350m", micro_batch=4, lr=1e-4,
             compile_=False, eval_every=7, eval_tokens=99, log_every=3, batch_tokens=4096 * 1024)
    assert (r.preset, r.micro_batch, r.lr, r.compile, r.eval_every, r.eval_tokens, r.log_every) == \
        ("350m", 4, 1e-4, False, 7, 99, 3)
    assert r.batch_tokens == 4096 * 1024
    assert r.steps == 20 * count_parameters("350m", 50_257) // (4096 * 1024)


def test_the_pretrain_config_carries_the_resolved_values(tmp_path):
    r = auto("cpu", None)
    config = pretrain_config(r, run_dir=tmp_path / "run", shards_dir=tmp_path / "shards",
                             tokenizer_path=tmp_path / "missing.json", device="cpu")
    assert (config.max_steps, config.global_batch_tokens, config.preset) == (r.steps, r.batch_tokens, "small")
    assert (config.optim.lr, config.optim.min_lr) == (r.lr, pytest.approx(r.lr / 10))
    assert config.checkpoint.every_steps == config.eval.every_steps == config.eval.sample_every_steps == r.eval_every
    assert config.eval.tokenizer_path is None  # a tokenizer that does not exist is not passed on


def test_the_corpus_is_read_from_the_shard_manifest(tmp_path):
    from train.synthetic import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "shards", vocab_size=300, train_docs=20, val_docs=4)
    corpus = read_corpus(shards)
    assert corpus.vocab_size == 300 and corpus.train_tokens > 20 * 16
    assert read_corpus(tmp_path / "nothing") is None


def test_the_help_text_copies_of_the_defaults_agree_with_train_defaults():
    import train.defaults as defaults
    from cli import training

    for name in ("CPU_AUTO_STEPS", "PRESET_LR", "GPU_BATCH_TOKENS", "GPU_MIN_STEPS", "TOKENS_PER_PARAM",
                 "CPU_MICRO_BATCH"):
        assert getattr(training, name) == getattr(defaults, name), name
