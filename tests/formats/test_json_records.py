"""One reader for every JSON/JSONL record file: deep nesting, bytes that are not UTF-8, lone surrogates
and `"content": null` are one-line errors (or counted skips) in every reader that uses it."""

from __future__ import annotations

import json

import pytest

from formats.benchmark_tasks import BenchmarkDataError, read_lambada
from pipeline.decontaminate import benchmark_items
from pipeline.errors import InputError
from formats.json_records import MAX_DEPTH, RecordFileError, read_records, surrogate_at
from train.tune.classify_data import ClassifyDataError, read_labelled
from train.tune.instruct_data import InstructDataError, read_instructions
from train.align.preference import PreferenceDataError, read_preference_pairs
from train.tune.templates import PromptTemplate

GOOD = {"instruction": "Say hi.", "output": "Hi.", "chosen": "Hi.", "rejected": "No.", "text": "hi there",
        "label": "ham"}
DEEP = "[" * 100_000 + "]" * 100_000            # deeper than Python's parser can go
NESTED = {"text": "x", "label": "ham", "instruction": "i", "output": "o", "chosen": "a", "rejected": "b",
          "meta": json.loads("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))}  # parses, but deeper than MAX_DEPTH

#: The second line of each bad file, and the phrase its error must hold.
BAD_LINES = {
    "deep": (DEEP.encode(), "nested deeper"),
    "nested": (json.dumps(NESTED).encode(), f"nested deeper than {MAX_DEPTH} levels"),
    "not_utf8": (b'{"instruction": "caf\xe9", "output": "x", "text": "caf\xe9", "label": "ham"}', "not UTF-8"),
    "surrogate": (b'{"instruction": "\\ud800", "output": "x", "chosen": "\\udc00 a", "rejected": "b", '
                  b'"text": "\\ud83d", "label": "ham"}', "lone surrogate"),
}


def write_jsonl(path, bad: bytes):
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n" + json.dumps({**GOOD, "label": "spam"}).encode()
                     + b"\n")
    return path


def read_with_each_reader(path):
    """(reader name, error class, call) for every reader of a record file."""
    return [
        ("instructions", InstructDataError, lambda: read_instructions(path)),
        ("preference", PreferenceDataError, lambda: read_preference_pairs(path, PromptTemplate())),
        ("classify", ClassifyDataError, lambda: read_labelled(path)),
        ("decontaminate", InputError, lambda: benchmark_items(str(path))),
        ("benchmark", BenchmarkDataError, lambda: read_lambada(path)),
    ]


@pytest.mark.parametrize("form", sorted(BAD_LINES))
def test_every_reader_turns_each_bad_form_into_its_one_line_error_naming_the_line(tmp_path, form):
    bad, phrase = BAD_LINES[form]
    path = write_jsonl(tmp_path / "data.jsonl", bad)
    for name, error, call in read_with_each_reader(path):
        with pytest.raises(error) as caught:
            call()
        message = str(caught.value)
        assert phrase in message and "data.jsonl:2" in message and "\n" not in message, (name, message)


def test_a_json_array_file_names_the_item_and_a_top_level_object_is_refused(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([GOOD, NESTED]))
    with pytest.raises(InstructDataError, match=r"a\.json item 1: is nested deeper than 64 levels"):
        read_instructions(path)
    path.write_text(json.dumps(GOOD))
    with pytest.raises(PreferenceDataError, match="holds a JSON dict, not a list of records"):
        read_preference_pairs(path, PromptTemplate())


def test_a_deep_json_array_file_is_an_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(RecordFileError, match="nested deeper than Python can parse"):
        list(read_records(path))


def test_the_byte_offset_and_line_of_the_first_byte_that_is_not_utf8_are_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": "b"}\n{"a": "\xff"}\n')
    with pytest.raises(RecordFileError, match=r"x\.jsonl:2: is not UTF-8 text \(byte offset 18: 0xff\)"):
        list(read_records(path))


def test_good_records_and_paired_surrogate_escapes_read_as_before(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"a": "\U0001f600", "b": [[["deep enough"]]]}) + "\n\n" + json.dumps([1]) + "\n")
    got = list(read_records(path))
    assert got == [(f"{path}:1", {"a": "\U0001f600", "b": [[["deep enough"]]]}), (f"{path}:3", [1])]


def test_surrogate_at_finds_argv_bytes_that_are_not_utf8():
    assert surrogate_at("caf\udce9") == 3 and surrogate_at("café 😀") is None


def test_chat_messages_with_null_content_are_a_counted_skip_or_a_named_error(tmp_path):
    null_chat = {"chosen": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}],
                 "rejected": [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}]}
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(null_chat) + "\n" + json.dumps(good) + "\n")
    pairs, stats = read_preference_pairs(path, PromptTemplate())
    assert len(pairs) == 1 and stats.skipped == {"bad_field": 1}
    path.write_text(json.dumps({"messages": [{"role": "user", "content": None},
                                             {"role": "assistant", "content": "x"}]}) + "\n")
    with pytest.raises(InstructDataError, match=r"p\.jsonl:1: message 0 is not an object with \"role\" and a string"):
        read_instructions(path)


@pytest.mark.parametrize("form", sorted(BAD_LINES))
def test_the_ablations_heldout_reader_names_the_line_too(tmp_path, form):
    from align_fixtures import EOT_ID, write_byte_tokenizer
    from evals.ablation import AblationError, read_heldout
    from train.evaluate import load_tokenizer

    tokenizer = load_tokenizer(write_byte_tokenizer(tmp_path / "tokenizer.json"))
    bad, phrase = BAD_LINES[form]
    path = write_jsonl(tmp_path / "heldout.jsonl", bad)
    with pytest.raises(AblationError, match=f"heldout.jsonl:2: .*{phrase}"):
        read_heldout(path, tokenizer, EOT_ID, 10_000)
