"""`crawlgpt benchmark`: task files read in their release layouts and formatted as lm-evaluation-harness
formats them; batched scoring equals one-at-a-time scoring; an exported model scores as its checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evals.scoring import (
    BenchmarkConfig,
    encode_request,
    evaluate_items,
    load_items,
    load_scoring_model,
    run_benchmarks,
    score_requests,
)
from formats.benchmark_tasks import TASKS, BenchmarkDataError, Request, chance_accuracy, load_task
from lm_fixtures import tiny_config, train_tiny_tokenizer, write_tiny_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def checkpoint(tokenizer_path, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("run"), tokenizer_path, tiny_config())


@pytest.fixture(scope="module")
def scorer(checkpoint, tokenizer_path):
    return load_scoring_model(checkpoint, tokenizer=tokenizer_path)


# ---- task files -----------------------------------------------------------------------------------


def test_piqa_items_are_formatted_as_the_harness_does():
    items = load_task("piqa", FIXTURES)
    assert [i.label for i in items] == [0, 0, 1]
    assert items[0].requests == (Request("Question: To keep milk cold\nAnswer:", " put it in the fridge."),
                                 Request("Question: To keep milk cold\nAnswer:", " put it in the oven."))
    assert items[0].choice_chars == (len("put it in the fridge."), len("put it in the oven."))


def test_lambada_context_stops_before_the_last_word():
    item = load_task("lambada", FIXTURES)[0]
    assert item.requests[0].context.endswith("everyone asked for more")
    assert item.requests[0].continuation == " music"


def test_hellaswag_wikihow_tags_are_cleaned():
    items = load_task("hellaswag", FIXTURES)
    assert items[0].requests[0].context == "Making bread: A man pours flour into a bowl. He"
    assert items[1].requests[0].context == "Home and Garden: How to water a garden. Fill the can with water. Then"
    assert items[1].requests[0].continuation == " walk along the rows and pour it on the plants."
    assert items[1].requests[3].continuation == " cut the bread with a knife."
    assert [i.label for i in items] == [2, 0]


def test_arc_labels_may_be_letters_or_digits():
    items = load_task("arc_easy", FIXTURES)
    assert [i.label for i in items] == [1, 0]
    assert items[0].requests[1] == Request("Question: Where should milk be kept so that it stays cold?\nAnswer:",
                                           " in the fridge")
    assert chance_accuracy(items, "multiple_choice") == pytest.approx((1 / 4 + 1 / 3) / 2)


def test_winogrande_options_change_the_context_and_the_rest_is_scored():
    item = load_task("winogrande", FIXTURES)[0]
    assert [r.context for r in item.requests] == [
        "The milk stayed cold in the fridge but not in the oven because the fridge",
        "The milk stayed cold in the fridge but not in the oven because the oven"]
    assert {r.continuation for r in item.requests} == {" was warm."}
    assert item.label == 1


def test_a_broken_line_is_named_with_file_and_line(tmp_path):
    bad = tmp_path / "lambada_test.jsonl"
    bad.write_text('{"text": "a b c"}\n{"text": \n')
    with pytest.raises(BenchmarkDataError, match=r"lambada_test.jsonl:2"):
        load_task("lambada", tmp_path)
    (tmp_path / "piqa-valid.jsonl").write_text('{"goal": "g", "sol1": "a"}\n')
    with pytest.raises(BenchmarkDataError, match="labels"):
        load_task("piqa", tmp_path)
    (tmp_path / "piqa-valid-labels.lst").write_text("0\n")
    with pytest.raises(BenchmarkDataError, match=r"piqa-valid.jsonl:1: missing field\(s\) \['sol2'\]"):
        load_task("piqa", tmp_path)
    with pytest.raises(BenchmarkDataError, match="--file hellaswag=PATH"):
        load_task("hellaswag", tmp_path)


def test_the_real_files_have_their_published_sizes(shared_data):
    assert len(load_task("piqa", shared_data / "eval")) == 1838
    assert len(load_task("lambada", shared_data / "eval")) == 5153
    assert len(load_task("lambada", shared_data / "eval", limit=10)) == 10


# ---- scoring --------------------------------------------------------------------------------------


def test_trailing_context_space_moves_to_the_continuation(scorer):
    a = encode_request(scorer, Request("Question: water\nAnswer: ", "pour it"))
    b = encode_request(scorer, Request("Question: water\nAnswer:", " pour it"))
    assert a == b
    assert a[0][0] == scorer.prefix_id


def test_batched_scores_equal_one_sequence_at_a_time(scorer):
    requests = [r for name in ("piqa", "lambada", "winogrande") for i in load_task(name, FIXTURES) for r in i.requests]
    pairs = [encode_request(scorer, r) for r in requests]
    batched = score_requests(scorer, pairs, batch_size=4)
    model = scorer.model
    for (context, continuation), (loglik, greedy) in zip(pairs, batched):
        ids = torch.tensor([context + continuation])
        logits, _ = model(ids[:, :-1], targets=ids[:, 1:])  # (1, T, V)
        tail = logits[0, -len(continuation):]  # (n, V)
        target = torch.tensor(continuation)
        want = F.log_softmax(tail, -1).gather(1, target[:, None]).sum().item()
        assert loglik == pytest.approx(want, abs=1e-4)
        assert greedy == bool((tail.argmax(-1) == target).all())


def test_accuracy_is_the_share_of_items_whose_best_choice_is_the_label(scorer):
    items = load_task("arc_easy", FIXTURES) + load_task("piqa", FIXTURES)
    result = evaluate_items(scorer, "piqa", items)
    picks = [max(range(len(e["loglik"])), key=lambda j, e=e: e["loglik"][j]) for e in result.per_item]
    assert result.metrics["acc"] == sum(p == i.label for p, i in zip(picks, items)) / len(items)
    norm = [max(range(len(e["loglik"])), key=lambda j, e=e, i=i: e["loglik"][j] / i.choice_chars[j])
            for e, i in zip(result.per_item, items)]
    assert result.metrics["acc_norm"] == sum(p == i.label for p, i in zip(norm, items)) / len(items)


def test_lambada_perplexity_is_exp_of_the_mean_last_word_loss(scorer):
    items = load_task("lambada", FIXTURES)
    result = evaluate_items(scorer, "lambada", items)
    mean = sum(e["loglik"][0] for e in result.per_item) / len(items)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(-mean))
    assert result.metrics["acc"] == sum(e["greedy"][0] for e in result.per_item) / len(items)
    assert result.chance == 0.0


def test_exported_model_scores_as_its_checkpoint(checkpoint, tokenizer_path, tmp_path):
    pytest.importorskip("transformers")
    from train.export.hf import export_checkpoint

    config = BenchmarkConfig(tasks=tuple(TASKS), eval_dir=str(FIXTURES))
    ours = run_benchmarks(load_scoring_model(checkpoint, tokenizer=tokenizer_path), config)
    out = export_checkpoint(checkpoint, tmp_path / "hf", tokenizer_path).out_dir
    theirs = run_benchmarks(load_scoring_model(out), config)
    for a, b in zip(ours, theirs):
        assert a.task == b.task
        assert {k: v for k, v in a.metrics.items() if "perplexity" not in k} == \
            {k: v for k, v in b.metrics.items() if "perplexity" not in k}
        for x, y in zip(a.per_item, b.per_item):
            assert x["loglik"] == pytest.approx(y["loglik"], abs=1e-3)


def test_benchmark_command_prints_the_table_and_writes_json(checkpoint, tokenizer_path, tmp_path):
    from click.testing import CliRunner

    from cli import main

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["benchmark", "--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer_path),
                                       "--eval-dir", str(FIXTURES), "--tasks", "piqa,lambada,hellaswag",
                                       "--limit", "2", "--json", str(out), "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    assert "chance %" in result.output and "piqa" in result.output and "50.0" in result.output
    report = json.loads(out.read_text())
    assert [r["task"] for r in report["results"]] == ["piqa", "lambada", "hellaswag"]
    assert all(r["items"] == 2 for r in report["results"])
    bad = CliRunner().invoke(main, ["benchmark", "--checkpoint", str(checkpoint), "--tasks", "mmlu",
                                    "--eval-dir", str(FIXTURES)])
    assert bad.exit_code != 0 and "unknown benchmark" in bad.output
