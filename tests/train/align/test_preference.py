"""Preference files in three shapes, the hash-stable split, tokenization, and every bad record counted."""

from __future__ import annotations

import json

import pytest

from align_fixtures import EOT_ID, write_byte_tokenizer, write_pairs
from train.evaluate import load_tokenizer
from train.align.preference import (
    PairStats,
    PreferenceDataError,
    is_validation,
    load_preference_data,
    read_preference_pairs,
    read_prompts,
    tokenize_pairs,
)
from train.tune.templates import PromptTemplate

T = PromptTemplate()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_byte_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


@pytest.mark.parametrize("fmt,name", [("book", "p.json"), ("prompt", "p.jsonl"), ("chat", "p.jsonl")])
def test_every_format_gives_the_same_pairs_with_the_template_applied(tmp_path, fmt, name):
    pairs, stats = read_preference_pairs(write_pairs(tmp_path / name, 5, fmt), T)
    assert stats.kept == 5 and not stats.skipped
    assert pairs[0].chosen == "Thank you! It is 0." and pairs[0].rejected == "Ugh. 0, obviously."
    if fmt != "chat":
        assert pairs[0].prompt == T.prompt("What is 0 plus 0?")
    else:
        assert pairs[0].prompt == T.chat_prompt([{"role": "user", "content": "What is 0 plus 0?"}])


def test_book_input_field_goes_into_the_prompt(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"instruction": "Fix:", "input": "freind", "chosen": "friend", "rejected": "fiend"}]))
    pairs, _ = read_preference_pairs(path, T)
    assert pairs[0].prompt == T.prompt("Fix:", "freind") and "### Input:\nfreind" in pairs[0].prompt


def test_chat_pairs_with_a_separate_prompt_list(tmp_path):
    path = tmp_path / "p.jsonl"
    user = [{"role": "user", "content": "hi"}]
    path.write_text(json.dumps({"prompt": user, "chosen": [{"role": "assistant", "content": "hello"}],
                                "rejected": [{"role": "assistant", "content": "go away"}]}) + "\n")
    pairs, _ = read_preference_pairs(path, T)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == (T.chat_prompt(user), "hello", "go away")


def test_bad_records_are_counted_under_their_reason_and_skipped(tmp_path):
    user = [{"role": "user", "content": "q"}]
    records = [
        {"instruction": "a", "chosen": "same", "rejected": "same"},  # identical
        {"instruction": "b", "chosen": "x"},  # missing_field
        {"chosen": "x", "rejected": "y"},  # missing_field (no prompt)
        {"instruction": "c", "chosen": 3, "rejected": "y"},  # bad_field
        {"chosen": user + [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},  # prompts_differ
        [1, 2],  # not_an_object
        {"instruction": "ok", "chosen": "good", "rejected": "bad"},
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(records))
    pairs, stats = read_preference_pairs(path, T)
    assert len(pairs) == 1 and stats.records == 7
    assert dict(stats.skipped) == {"identical": 1, "missing_field": 2, "bad_field": 1, "prompts_differ": 1,
                                   "not_an_object": 1}


def test_a_file_without_any_usable_pair_is_a_clear_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"instruction": "a", "chosen": "s", "rejected": "s"}) + "\n")
    with pytest.raises(PreferenceDataError, match="no usable preference pair.*1 identical"):
        read_preference_pairs(path, T)
    path.write_text('{"instruction": "a", "chosen": "s"\n')
    with pytest.raises(PreferenceDataError, match=r"p.jsonl:1 is not valid JSON"):
        read_preference_pairs(path, T)
    with pytest.raises(PreferenceDataError, match="does not exist"):
        read_preference_pairs(tmp_path / "missing.json", T)


def test_split_depends_on_the_prompt_only_not_on_file_order(tmp_path):
    a = write_pairs(tmp_path / "a.json", 60)
    records = json.loads(a.read_text())
    b = tmp_path / "b.json"
    b.write_text(json.dumps(records[::-1]))
    side = {}
    for path in (a, b):
        pairs, _ = read_preference_pairs(path, T)
        for p in pairs:
            side.setdefault(p.prompt, set()).add(is_validation(p.key, 0.2))
    assert all(len(s) == 1 for s in side.values())
    assert 0 < sum(True in s for s in side.values()) < 60


def test_tokens_end_with_end_of_text_and_long_prompts_are_skipped(tokenizer, tmp_path):
    pairs, stats = read_preference_pairs(write_pairs(tmp_path / "p.json", 3), T)
    out = tokenize_pairs(pairs, tokenizer, EOT_ID, 512, stats)
    assert out[0].prompt[0] == EOT_ID and out[0].chosen[-1] == EOT_ID and out[0].rejected[-1] == EOT_ID
    assert tokenizer.decode(out[0].chosen[:-1]) == "Thank you! It is 0."
    stats = PairStats()
    assert tokenize_pairs(pairs, tokenizer, EOT_ID, 100, stats) == []  # the alpaca prompt alone is > 100 bytes
    assert stats.skipped["prompt_too_long"] == 3
    stats = PairStats()
    cut = tokenize_pairs(pairs, tokenizer, EOT_ID, len(out[0].prompt) + 5, stats)
    assert stats.truncated == 3 and all(len(p.prompt) + len(p.chosen) <= len(out[0].prompt) + 5 for p in cut)


def test_load_preference_data_counts_and_splits(tokenizer, tmp_path):
    data = load_preference_data(write_pairs(tmp_path / "p.json", 40), tokenizer, T, EOT_ID, 256, 0.25)
    assert len(data.train) + len(data.val) == 40 and data.val and data.stats.kept == 40


def test_prompts_come_from_preference_or_prompt_files(tmp_path):
    prompts, stats = read_prompts(write_pairs(tmp_path / "p.jsonl", 4, "chat"), T)
    assert len(prompts) == 4 and prompts[0][0] == T.chat_prompt([{"role": "user", "content": "What is 0 plus 0?"}])


def test_the_real_preference_file_reads_with_six_identical_pairs_skipped(shared_data):
    pairs, stats = read_preference_pairs(shared_data / "instruct" / "instruction-data-with-preference.json", T)
    assert stats.records == 1100 and stats.skipped == {"identical": 6} and len(pairs) == 1094
