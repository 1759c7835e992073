"""`crawlgpt ablation`: both arms train with the same settings through the one loop, are scored on the same
held-out tokens, and a difference is called a result only when it is larger than the seeds' spread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evals.ablation import AblationConfig, AblationError, RunResult, run_ablation, summarize, table_rows
from lm_fixtures import TOKENIZER_VOCAB, train_tiny_tokenizer
from train.evaluate import tokenizer_hash
from train.synthetic import write_synthetic_shards

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def runs(arm: str, losses: list[float]) -> list[RunResult]:
    return [RunResult(arm, seed, "", heldout=[(100, loss + 1), (200, loss)]) for seed, loss in enumerate(losses)]


def test_arms_separate_only_when_their_ranges_do_not_overlap():
    apart = summarize(runs("raw", [5.0, 5.1, 5.2]) + runs("curated", [4.0, 4.1, 4.2]), ["raw", "curated"])
    assert apart["separated"]["heldout_loss"]["ranges_apart"]
    assert apart["separated"]["heldout_loss"]["difference"] == pytest.approx(1.0)
    assert apart["arms"]["raw"]["heldout_loss"]["std"] == pytest.approx(0.1)
    assert apart["arms"]["curated"]["heldout_loss@100"]["mean"] == pytest.approx(5.1)
    overlap = summarize(runs("raw", [5.0, 4.5]) + runs("curated", [4.8, 4.2]), ["raw", "curated"])
    assert not overlap["separated"]["heldout_loss"]["ranges_apart"]
    one_seed = summarize(runs("raw", [9.0]) + runs("curated", [1.0]), ["raw", "curated"])
    assert not one_seed["separated"]["heldout_loss"]["ranges_apart"]
    rows = table_rows(apart, ["raw", "curated"])
    assert rows[0][0] == "heldout_loss@100" and rows[1][0] == "heldout_loss"
    assert "separated" in rows[1][3]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    tok = train_tiny_tokenizer(root / "tokenizer" / "tokenizer.json")
    for folder, seed in (("shards-raw", 1), ("shards", 2)):
        out = write_synthetic_shards(root / folder, vocab_size=TOKENIZER_VOCAB, train_docs=40, val_docs=10, seed=seed,
                                     tokenizer_hash=tokenizer_hash(tok), max_len=64)
        shutil.copyfile(tok, out / "tokenizer.json")
    (root / "heldout.jsonl").write_text("\n".join(json.dumps({"text": "The cat sat on the mat. " * 10})
                                                  for _ in range(5)) + "\n")
    return root


def small_config(data: Path, **changes) -> AblationConfig:
    values = dict(data_dir=str(data), seeds=(1, 2), preset="tiny", model_overrides=(), steps=4, batch_tokens=64,
                  seq_len=16, eval_points=2, heldout=str(data / "heldout.jsonl"), heldout_tokens=200,
                  tasks=("piqa",), benchmark_limit=2, eval_dir=str(FIXTURES))
    return AblationConfig(**{**values, **changes})


@pytest.mark.slow
def test_every_arm_and_seed_is_trained_scored_and_reused_on_a_rerun(data):
    results = run_ablation(small_config(data))
    assert [(r.arm, r.seed) for r in results] == [("raw", 1), ("raw", 2), ("curated", 1), ("curated", 2)]
    for r in results:
        assert [tokens for tokens, _ in r.heldout] == [2 * 64, 4 * 64]
        assert 0 <= r.benchmarks["piqa"]["acc"] <= 1 and r.train_seconds > 0
    report = json.loads((data / "ablation" / "results.json").read_text())
    assert report["config"]["tokens_per_run"] == 256 and len(report["runs"]) == 4
    assert (data / "ablation" / "ablation.png").stat().st_size > 0
    again = run_ablation(small_config(data))
    assert all(r.train_seconds == 0 for r in again)
    assert [r.heldout for r in again] == [r.heldout for r in results]


def test_missing_shards_and_heldout_are_named(data, tmp_path):
    with pytest.raises(AblationError, match="crawlgpt shards --from raw"):
        run_ablation(small_config(data, arms=(("raw", "nowhere-raw"), ("curated", "shards"))))
    with pytest.raises(AblationError, match="--heldout"):
        run_ablation(small_config(data, heldout=str(tmp_path / "none.jsonl")))


@pytest.mark.slow
def test_a_run_folder_of_other_settings_is_not_reused(data, tmp_path):
    config = small_config(data, seeds=(1,), steps=2, eval_points=1, tasks=(), out=str(tmp_path / "abl"))
    run_ablation(config)
    with pytest.raises(AblationError, match="--out"):
        run_ablation(small_config(data, seeds=(1,), steps=2, eval_points=1, tasks=(), lr=1e-3,
                                  out=str(tmp_path / "abl")))
