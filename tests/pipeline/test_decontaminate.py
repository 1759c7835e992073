"""`crawlgpt decontaminate`: documents sharing a 13-gram with a benchmark item are dropped with the item they
share, everything else is kept; the stage resumes and refuses a changed config like every other stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.decontaminate import DecontaminateConfig, NgramIndex, parse_benchmark, run_decontaminate, words
from pipeline.documents import Document, read_documents, write_documents
from pipeline.errors import InputError, StageConfigChanged
from formats.manifest import output_record, read_json
from pipeline.stage import ShardStats, ShardTask, run_stage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
PIQA = str(FIXTURES / "piqa-valid.jsonl")
LAMBADA = str(FIXTURES / "lambada_test.jsonl")

# 13 words of the second PIQA fixture item ("How do I cut bread? Use a sharp knife and a wooden board."),
# with other case and punctuation.
COPIED = "Our tips: HOW do I cut bread... use a sharp knife, and a wooden board! Then eat."
# Only 12 of those words in a row: no 13-gram in common.
SHORT = "do I cut bread use a sharp knife and a wooden board"
LAMBADA_COPY = ("I remember: he said the history of the city was long and strange, and he told us the history. "
                "It was a good evening.")


def _copy(task: ShardTask, stage_dir: Path, config: dict) -> ShardStats:
    docs = list(read_documents(task.inputs[0]))
    out = stage_dir / f"{task.name}.parquet"
    write_documents(out, docs)
    return ShardStats(docs_in=len(docs), kept=len(docs), outputs=[output_record(out, len(docs), stage_dir)])


@pytest.fixture()
def data(tmp_path):
    docs = {"a": [Document("a-1", COPIED), Document("a-2", SHORT), Document("a-3", "Rivers and mountains.")],
            "b": [Document("b-1", LAMBADA_COPY), Document("b-2", "Nothing from any benchmark here at all.")]}
    tasks = []
    for name, shard in docs.items():
        write_documents(tmp_path / "dedup" / f"{name}.parquet", shard)
        tasks.append(ShardTask(name, (str(tmp_path / "dedup" / f"{name}.parquet"),)))
    run_stage("dedup", tmp_path / "corpus", {"test": True}, tasks, _copy)
    return tmp_path


def test_words_ignore_case_and_punctuation():
    assert words("How do I cut bread? Use a sharp-knife!") == ["how", "do", "i", "cut", "bread", "use", "a",
                                                               "sharp", "knife"]


def test_documents_sharing_a_13_gram_are_dropped_with_the_item(data):
    m = run_decontaminate(data, DecontaminateConfig(benchmarks=(PIQA, LAMBADA)))
    assert m["totals"]["dropped"] == {"benchmark_overlap_piqa": 1, "benchmark_overlap_lambada": 1}
    assert m["totals"]["kept"] == 3 and m["totals"]["docs_in"] == 5
    kept = {d.id for p in ("a", "b") for d in read_documents(data / "decontaminated" / f"{p}.parquet")}
    assert kept == {"a-2", "a-3", "b-2"}
    import pyarrow.parquet as pq

    rejected = pq.read_table(data / "decontaminated" / "rejected" / "a.parquet").to_pylist()
    assert [r["id"] for r in rejected] == ["a-1"]
    assert rejected[0]["reason"] == "benchmark_overlap_piqa"
    import json

    meta = json.loads(rejected[0]["meta"])
    assert meta["decontam_item"] == "piqa-2"
    assert meta["decontam_ngram"] == "how do i cut bread use a sharp knife and a wooden board"
    assert m["benchmarks"]["items"] == {"piqa": 3, "lambada": 3}


def test_a_shorter_ngram_setting_catches_shorter_overlaps(data):
    m = run_decontaminate(data, DecontaminateConfig(benchmarks=(PIQA,), ngram=8))
    assert m["totals"]["dropped"] == {"benchmark_overlap_piqa": 2}


def test_rerun_skips_and_a_changed_config_is_refused(data, caplog):
    config = DecontaminateConfig(benchmarks=(PIQA,))
    first = run_decontaminate(data, config)
    with caplog.at_level("INFO"):
        second = run_decontaminate(data, config)
    assert "2 of 2 shards already done" in caplog.text
    assert first["totals"] == second["totals"]
    with pytest.raises(StageConfigChanged, match="ngram"):
        run_decontaminate(data, DecontaminateConfig(benchmarks=(PIQA,), ngram=10))
    forced = run_decontaminate(data, DecontaminateConfig(benchmarks=(PIQA,), ngram=10), force=True)
    assert forced["config"]["ngram"] == 10


def test_benchmark_names_and_missing_files(tmp_path):
    assert parse_benchmark(PIQA) == ("piqa", Path(PIQA))
    assert parse_benchmark(f"lambada={tmp_path}/x.jsonl") == ("lambada", tmp_path / "x.jsonl")
    (tmp_path / "mine.jsonl").write_text('{"question": "one two three four", "answer": "five six"}\n')
    index = NgramIndex((str(tmp_path / "mine.jsonl"),), n=3)
    assert index.items == {"mine": 1}
    assert index.matches("say two three four now")[0] == 1
    with pytest.raises(InputError, match="does not exist"):
        NgramIndex((str(tmp_path / "nope.jsonl"),), n=13)


def test_decontaminate_command_prints_the_benchmarks(data):
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["decontaminate", "--data", str(data), "--benchmark", PIQA,
                                       "--benchmark", f"lambada={LAMBADA}", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "benchmark_overlap_piqa" in result.output and "documents dropped" in result.output
    assert read_json(data / "decontaminated" / "manifest.json")["stage"] == "decontaminate"
