"""Instruction fine-tuning on CPU with a tiny model: templates, data readers, masks, batching, the
SFT objective on the one loop, exact resume, and a clear message for each kind of bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_base import FIXTURES, finetune_data  # noqa: F401 (a fixture)
from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
from train.checkpoint import latest_checkpoint, load_checkpoint, model_from_checkpoint
from train.tune.instruct_data import (
    InstructBatchLoader,
    InstructDataError,
    read_instructions,
    split_examples,
    tokenize_examples,
)
from train.tune.templates import PromptTemplate, encode_messages, template_from_checkpoint

tokenizers = pytest.importorskip("tokenizers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(finetune_data) -> Path:
    return finetune_data


@pytest.fixture(scope="module")
def tokenizer(data):
    return tokenizers.Tokenizer.from_file(str(data / "tokenizer" / "tokenizer.json"))


def sft_configs(data: Path, run: str, instructions: Path = FIXTURES / "alpaca.json", steps: int = 6, **sft):
    from train.tune.sft import SFTConfig

    train_config = TrainConfig(
        run_dir=str(data / "runs" / run), max_steps=steps, preset="tiny", global_batch_tokens=2 * 4 * 128,
        device="cpu", seed=0,
        data=DataConfig(shards_dir="unused", micro_batch_size=4, prefetch_batches=0),
        optim=OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=1),
        eval=EvalConfig(every_steps=3, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        log=LogConfig(every_steps=1, tensorboard=False, plot=True),
    )
    sft = {"num_responses": 2, "max_new_tokens": 8, **sft}
    sft_config = SFTConfig(base_checkpoint=str(data / "runs" / "base"), instructions=str(instructions),
                           tokenizer_path=str(data / "tokenizer" / "tokenizer.json"), **sft)
    return train_config, sft_config


# --------------------------------------------------------------------------------------------------
# Templates


def test_alpaca_template_is_the_books_with_input_only_when_non_empty():
    t = PromptTemplate()
    with_input = t.prompt("Fix it.", "He go.")
    assert with_input.startswith("Below is an instruction that describes a task.")
    assert "### Instruction:\nFix it.\n\n### Input:\nHe go.\n\n### Response:\n" in with_input
    assert "### Input:" not in t.prompt("Fix it.")
    assert t.prompt("Fix it.").endswith("### Response:\n")


def test_templates_round_trip_through_checkpoint_dicts_and_default_to_alpaca():
    chat = PromptTemplate("chat")
    assert PromptTemplate.from_dict(chat.to_dict()) == chat
    assert template_from_checkpoint({"template": chat.to_dict()}) == chat
    assert template_from_checkpoint({}).name == "alpaca"


def test_chat_prompt_ends_at_the_start_of_the_next_assistant_turn():
    chat = PromptTemplate("chat")
    text = chat.chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}])
    assert text == ("<|reserved_0|>system\nBe brief.<|reserved_1|>\n<|reserved_0|>user\nHi<|reserved_1|>\n"
                    "<|reserved_0|>assistant\nHello<|endoftext|><|reserved_0|>user\nAgain<|reserved_1|>\n"
                    "<|reserved_0|>assistant\n")


def test_only_assistant_turns_and_their_end_of_text_are_responses(tokenizer):
    chat = PromptTemplate("chat")
    messages = [{"role": "user", "content": "Repeat cat dog."}, {"role": "assistant", "content": "cat dog"},
                {"role": "user", "content": "Repeat bird."}, {"role": "assistant", "content": "bird"}]
    ids, mask = encode_messages(tokenizer, messages, chat)
    eot = tokenizer.token_to_id("<|endoftext|>")
    response_ids = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(response_ids, skip_special_tokens=True) == "cat dogbird"
    assert response_ids.count(eot) == 2 and ids.count(eot) == 2
    assert response_ids[-1] == eot


def test_special_token_strings_in_content_stay_plain_text(tokenizer):
    chat = PromptTemplate("chat")
    ids, _ = encode_messages(tokenizer, [{"role": "user", "content": "say <|endoftext|>"}], chat,
                             add_generation_prompt=True)
    assert tokenizer.token_to_id("<|endoftext|>") not in ids
    assert ids.count(tokenizer.token_to_id("<|reserved_0|>")) == 2


def test_the_chat_template_needs_the_reserved_tokens(tmp_path):
    from finetune_base import train_tokenizer
    from train.tune.templates import TemplateError

    path = train_tokenizer(tmp_path / "tok.json", ["a b c"] * 10, vocab_size=300, special_tokens=["<|endoftext|>"])
    with pytest.raises(TemplateError, match="reserved"):
        PromptTemplate("chat").check_tokenizer(tokenizers.Tokenizer.from_file(str(path)))


# --------------------------------------------------------------------------------------------------
# Reading


def test_alpaca_json_and_chat_jsonl_are_read():
    alpaca, stats = read_instructions(FIXTURES / "alpaca.json")
    assert len(alpaca) == 80 and stats.alpaca == 80
    chat, stats = read_instructions(FIXTURES / "chat.jsonl")
    assert len(chat) == 40 and stats.chat == 40 and chat[0].messages is not None


def test_alpaca_jsonl_is_read(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "Say hi.", "output": "hi"}\n\n{"instruction": "X", "input": "y", "output": "z"}\n')
    examples, _ = read_instructions(path)
    assert [e.output for e in examples] == ["hi", "z"] and examples[1].input == "y"


@pytest.mark.parametrize("content, message", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', r"bad\.jsonl:2: is not valid JSON"),
    ('[1, 2]\n', r"item 0: is a JSON int, not an object"),
    ('{"instruction": "a"}\n', r'bad\.jsonl:1: has no "output" field'),
    ('{"output": "a"}\n', r'has no "instruction" field'),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', r"unknown role 'robot'.*system, user, assistant"),
    ('{"messages": [{"role": "user", "content": "x"}]}\n', r"no assistant turn"),
    ('{"messages": "hello"}\n', r'"messages" is not a non-empty list'),
    ('{"instruction": "a", "output": ""}\n', r"no usable examples"),
])
def test_bad_instruction_files_name_the_file_line_and_fix(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InstructDataError, match=message):
        read_instructions(path)


def test_an_empty_response_is_a_counted_skip(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "a", "output": " "}\n{"instruction": "b", "output": "c"}\n'
                    '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}\n')
    examples, stats = read_instructions(path)
    assert len(examples) == 1 and stats.skipped == {"empty_response": 2}


def test_the_split_is_stable_when_the_file_grows(tmp_path):
    examples, _ = read_instructions(FIXTURES / "alpaca.json")
    _, val_small = split_examples(examples[:40], 0.25)
    _, val_big = split_examples(examples, 0.25)
    assert val_small and {e.key for e in val_small} <= {e.key for e in val_big}
    assert {e.key for e in val_big} - {e.key for e in val_small} <= {e.key for e in examples[40:]}


# --------------------------------------------------------------------------------------------------
# Tokenizing and batching


def test_prompt_tokens_are_masked_and_train_on_prompt_unmasks_them(tokenizer):
    examples, _ = read_instructions(FIXTURES / "alpaca.json")
    eot = tokenizer.token_to_id("<|endoftext|>")
    masked = tokenize_examples(examples[:5], tokenizer, PromptTemplate(), eot, 128)
    full = tokenize_examples(examples[:5], tokenizer, PromptTemplate(), eot, 128, train_on_prompt=True)
    for tokens, trained, ex in zip(masked.tokens, masked.trained, masked.examples):
        assert tokens[0] == eot and tokens[-1] == eot and trained[-1] and not trained[0]
        assert tokenizer.decode(tokens[trained][:-1].tolist()) == ex.output
    assert all(m[1:].all() for m in full.trained)


def test_too_long_examples_are_skipped_or_truncated_and_counted(tokenizer):
    examples, _ = read_instructions(FIXTURES / "alpaca.json")
    eot = tokenizer.token_to_id("<|endoftext|>")
    lengths = [len(t) for t in tokenize_examples(examples, tokenizer, PromptTemplate(), eot, 128).tokens]
    limit = int(np.median(lengths))
    skipped = tokenize_examples(examples, tokenizer, PromptTemplate(), eot, limit)
    cut = tokenize_examples(examples, tokenizer, PromptTemplate(), eot, limit, too_long="truncate")
    too_long = sum(n > limit + 1 for n in lengths)
    assert skipped.skipped_too_long == too_long and len(skipped) == len(examples) - too_long
    assert cut.truncated + cut.skipped_too_long == too_long and max(len(t) for t in cut.tokens) == limit + 1


@pytest.mark.parametrize("batching", ["pack", "bucket"])
def test_batches_hold_every_example_once_per_epoch_with_little_padding(tokenizer, batching):
    examples, _ = read_instructions(FIXTURES / "alpaca.json")
    eot = tokenizer.token_to_id("<|endoftext|>")
    data = tokenize_examples(examples, tokenizer, PromptTemplate(), eot, 128)
    loader = InstructBatchLoader(data, 512, 4, seed=3, eot_id=eot, batching=batching)
    rows = loader.plan(0)
    assert sorted(i for row in rows for i in row) == list(range(len(data)))
    real = padded = 0
    for _ in range(len(rows) // 4):
        inputs, targets, n = loader.next_batch()
        real += n
        padded += inputs.numel()
        assert inputs.shape[1] % 8 == 0 and (targets != -1).any()
    assert real / padded > (0.85 if batching == "pack" else 0.7)


def test_targets_are_the_response_tokens_shifted_by_one(tokenizer):
    examples, _ = read_instructions(FIXTURES / "alpaca.json")
    eot = tokenizer.token_to_id("<|endoftext|>")
    data = tokenize_examples(examples[:1], tokenizer, PromptTemplate(), eot, 128)
    inputs, targets, _ = InstructBatchLoader(data, 128, 1, seed=0, eot_id=eot).next_batch()
    n = len(data.tokens[0]) - 1
    assert torch.equal(inputs[0, :n], torch.from_numpy(data.tokens[0][:-1]))
    scored = targets[0][targets[0] != -1].tolist()
    assert tokenizer.decode(scored[:-1]) == examples[0].output and scored[-1] == eot


def test_loader_state_round_trip_continues_with_the_same_batches(tokenizer):
    examples, _ = read_instructions(FIXTURES / "alpaca.json")
    eot = tokenizer.token_to_id("<|endoftext|>")
    data = tokenize_examples(examples, tokenizer, PromptTemplate(), eot, 128)
    a = InstructBatchLoader(data, 128, 4, seed=1, eot_id=eot)
    for _ in range(7):
        a.next_batch()
    b = InstructBatchLoader(data, 128, 4, seed=1, eot_id=eot)
    b.load_state_dict(a.state_dict())
    for _ in range(10):  # across epoch boundaries too
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    c = InstructBatchLoader(data, 64, 4, seed=1, eot_id=eot)
    with pytest.raises(InstructDataError, match="seq_len"):
        c.load_state_dict(a.state_dict())


# --------------------------------------------------------------------------------------------------
# The objective on the loop


def test_sft_lowers_the_response_loss_and_writes_checkpoints_metrics_plot_and_responses(data):
    from train.tune.sft import run_sft

    train_config, sft_config = sft_configs(data, "sft", steps=12)
    result = run_sft(train_config, sft_config)
    run = data / "runs" / "sft"
    assert result.after["val_response_loss"] < result.before["val_response_loss"]
    payload = load_checkpoint(latest_checkpoint(run))
    assert payload["kind"] == "sft" and payload["template"]["name"] == "alpaca"
    assert payload["data"]["eot_id"] == 0 and payload["data"]["train_examples"] + payload["data"]["val_examples"] == 80
    model_from_checkpoint(payload)  # a plain GPT state dict
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "val" for r in records) and (run / "loss.png").is_file()
    lines = [json.loads(x) for x in (run / "responses.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and {"instruction", "input", "reference", "before_greedy", "after_greedy", "before_sampled",
                                "after_sampled"} <= set(lines[0])
    assert json.loads((run / "sft-summary.json").read_text())["after"]["val_response_loss"] == \
        pytest.approx(result.after["val_response_loss"])


def test_chat_data_fine_tunes_with_the_chat_template(data):
    from train.tune.sft import run_sft

    train_config, sft_config = sft_configs(data, "sft-chat", FIXTURES / "chat.jsonl", steps=3, template="chat", val_share=0.3,
                                           num_responses=1)
    result = run_sft(train_config, sft_config)
    assert template_from_checkpoint(load_checkpoint(result.train.checkpoint)).name == "chat"


def test_resumed_sft_reaches_bitwise_the_same_weights_as_an_uninterrupted_run(data):
    from train import train
    from train.tune.sft import SFTObjective

    full_cfg, sft_cfg = sft_configs(data, "sft-full", steps=8, num_responses=0)
    full = train(full_cfg, objective=SFTObjective(sft_cfg))

    def stop_at_step_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    split_cfg, _ = sft_configs(data, "sft-split", steps=8, num_responses=0)
    stopped = train(split_cfg, on_step=stop_at_step_3, objective=SFTObjective(sft_cfg))
    assert stopped.interrupted and stopped.final_step < 8
    resumed = train(split_cfg.replace(resume=True), objective=SFTObjective(sft_cfg))
    assert resumed.final_step == 8
    a = load_checkpoint(latest_checkpoint(data / "runs" / "sft-full"))
    b = load_checkpoint(latest_checkpoint(data / "runs" / "sft-split"))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    resumed_losses = dict(resumed.train_losses)
    assert all(resumed_losses[s] == loss for s, loss in full.train_losses if s > stopped.final_step)


def test_resuming_on_other_instruction_data_is_refused(data, tmp_path):
    from train import train
    from train.tune.sft import SFTObjective

    cfg, sft_cfg = sft_configs(data, "sft-other", steps=1, num_responses=0)
    train(cfg, objective=SFTObjective(sft_cfg))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads((FIXTURES / "alpaca.json").read_text())[:60]))
    _, other_cfg = sft_configs(data, "sft-other", other, steps=2, num_responses=0)
    with pytest.raises(InstructDataError, match="other instruction data"):
        train(cfg.replace(max_steps=2, resume=True), objective=SFTObjective(other_cfg))


def test_a_tokenizer_other_than_the_base_models_is_a_vocab_mismatch(data, tmp_path):
    from finetune_base import train_tokenizer
    from train import VocabMismatchError
    from train.tune.sft import SFTObjective

    other = train_tokenizer(tmp_path / "other.json", ["x y z"] * 20, vocab_size=300)
    cfg, sft_cfg = sft_configs(data, "sft-vocab", steps=1)
    objective = SFTObjective(type(sft_cfg)(**{**sft_cfg.__dict__, "tokenizer_path": str(other)}))
    with pytest.raises(VocabMismatchError):
        objective.prepare()


def test_evaluate_instructions_scores_base_and_tuned_checkpoints_alike(data):
    from train.tune.sft import evaluate_instructions

    tok = data / "tokenizer" / "tokenizer.json"
    base = evaluate_instructions(data / "runs" / "base", FIXTURES / "alpaca.json", tok)
    assert base.kind == "pretrain" and base.template == "alpaca" and base.examples == 80
    assert base.result.tokens > 0 and np.isfinite(base.result.loss)


def test_shared_instruction_data_is_read(shared_data):
    path = shared_data / "instruct" / "instruction-data.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    examples, stats = read_instructions(path)
    assert stats.records == 1100 and len(examples) + sum(stats.skipped.values()) == 1100
    train_ex, val_ex = split_examples(examples, 0.1)
    assert 60 < len(val_ex) < 160


def test_every_rank_gets_the_same_number_of_validation_batches(tokenizer):
    from train.tune.instruct_data import eval_batches

    examples, _ = read_instructions(FIXTURES / "alpaca.json")
    eot = tokenizer.token_to_id("<|endoftext|>")
    data = tokenize_examples(examples[:9], tokenizer, PromptTemplate(), eot, 128)
    per_rank = [list(eval_batches(data, 2, eot, rank, 2)) for rank in range(2)]  # 5 batches for 2 ranks
    assert len(per_rank[0]) == len(per_rank[1]) == 3
    scored = sum(int((t != -1).sum()) for batches in per_rank for _, t in batches)
    assert scored == sum(int(m[1:].sum()) for m in data.trained)  # the filler batch scores nothing
