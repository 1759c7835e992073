"""The dedup stage end to end on small synthetic corpora: known answers, invariance, resume, accounting."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.dedup import DedupConfig, run_dedup
from pipeline.dedup.show import find_cluster, format_cluster, jaccard, shingle_set
from pipeline.documents import Document, read_documents, write_documents
from pipeline.errors import ConfigError, InputError, StageConfigChanged
from formats.manifest import load_manifest, output_record
from pipeline.stage import ShardStats, ShardTask, run_stage

LETTERS = "abcdefghijklmnopqrstuvwxyz"
CONFIG = DedupConfig(partitions=3)


def copy_shard(task: ShardTask, stage_dir: Path, config) -> ShardStats:
    """A trivial upstream 'filter' stage: keep everything."""
    out = stage_dir / f"{task.name}.parquet"
    n = write_documents(out, read_documents(task.inputs[0]))
    return ShardStats(docs_in=n, kept=n, outputs=[output_record(out, n, stage_dir)])


def make_filtered(data_dir: Path, shards: list[list[Document]]) -> None:
    """DATA/filtered as the filter stage leaves it: shards, receipts, manifest."""
    src = data_dir / "src"
    tasks = []
    for i, docs in enumerate(shards):
        path = src / f"shard-{i:02d}.parquet"
        write_documents(path, docs)
        tasks.append(ShardTask(f"shard-{i:02d}", (str(path),)))
    run_stage("filter", data_dir / "filtered", {"test": True}, tasks, copy_shard)


def words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def edited(rng: random.Random, text: str, fraction: float) -> str:
    w = text.split()
    for i in rng.sample(range(len(w)), int(round(fraction * len(w)))):
        w[i] = "".join(rng.choice(LETTERS) for _ in range(6))
    return " ".join(w)


def corpus(seed: int = 0) -> list[Document]:
    """Unique documents plus exact copies (re-cased, re-punctuated) and 2 %-edited near copies."""
    rng = random.Random(seed)
    docs = []
    for i in range(24):
        text = " ".join(words(rng, 200))
        docs.append(Document(f"orig-{i:02d}", text, url=f"http://o/{i}"))
        if i % 3 == 0:
            docs.append(Document(f"exact-{i:02d}", text.upper().replace(" ", ", ")))
        if i % 4 == 0:
            docs.append(Document(f"near-{i:02d}", edited(rng, text, 0.02)))
        if i % 6 == 0:
            docs.append(Document(f"far-{i:02d}", edited(rng, text, 0.6)))
    return docs


def outcome(data_dir: Path) -> tuple[dict, dict]:
    """(kept id -> meta, removed id -> (reason, cluster, representative)) read from DATA/corpus."""
    m = load_manifest(data_dir / "corpus")
    kept, removed = {}, {}
    for shard in m["shards"]:
        for out in shard["outputs"]:
            path = data_dir / "corpus" / out["path"]
            if out["path"].startswith("rejected/"):
                for row in pq.read_table(path).to_pylist():
                    meta = json.loads(row["meta"])
                    removed[row["id"]] = (row["reason"], meta["dedup_cluster"], meta["dedup_representative"])
            else:
                kept.update({d.id: d.meta for d in read_documents(path)})
    return kept, removed


@pytest.fixture
def data(tmp_path: Path) -> Path:
    docs = corpus()
    make_filtered(tmp_path, [docs[0::3], docs[1::3], docs[2::3]])
    return tmp_path


def test_identical_and_near_copies_cluster_and_distant_edits_do_not(data):
    run_dedup(data, CONFIG)
    kept, removed = outcome(data)
    for i in range(24):
        group = {f"orig-{i:02d}"} | ({f"exact-{i:02d}"} if i % 3 == 0 else set()) | (
            {f"near-{i:02d}"} if i % 4 == 0 else set()
        )
        (rep,) = group & set(kept)  # exactly one member of each group survives
        assert {removed[d][2] for d in group - {rep}} <= {rep}
        assert len({removed[d][1] for d in group - {rep}}) <= 1  # one cluster id
        for d in group - {rep}:
            expected = "near_duplicate" if "near" in d + rep else "exact_duplicate"
            assert removed[d][0] == expected, (d, rep)
    for i in range(0, 24, 6):  # 60 % of words edited, Jaccard ~0.1: never a duplicate
        assert f"far-{i:02d}" in kept and "dedup_cluster" not in kept[f"far-{i:02d}"]
    assert sorted(set(kept) | set(removed)) == sorted(d.id for d in corpus())
    assert len(removed) == 8 + 6  # 8 exact copies, 6 near copies


def test_removed_documents_name_their_cluster_and_a_kept_representative(data):
    run_dedup(data, CONFIG)
    kept, removed = outcome(data)
    for doc_id, (reason, cluster, rep) in removed.items():
        assert rep in kept
        assert kept[rep]["dedup_cluster"] == cluster
    rejected = pq.read_table(data / "corpus" / "rejected" / "shard-00.parquet").to_pylist()
    near = [r for r in rejected if r["reason"] == "near_duplicate"]
    assert near and all(0.55 <= r["score"] < 1.0 for r in near)


def test_the_representative_is_the_longest_then_the_smallest_id(tmp_path):
    rng = random.Random(5)
    text, other = " ".join(words(rng, 300)), " ".join(words(rng, 300))
    longer = text + " " + " ".join(words(rng, 10))
    make_filtered(
        tmp_path,
        [[Document("b", text), Document("z", longer), Document("d", other)],
         [Document("a", text.upper()), Document("c", other + "!")]],
    )
    run_dedup(tmp_path, CONFIG)
    kept, removed = outcome(tmp_path)
    assert set(kept) == {"z", "c"}
    assert removed["a"][::2] == removed["b"][::2] == ("near_duplicate", "z")  # z is longer
    assert removed["d"][::2] == ("exact_duplicate", "c")  # equal length: the smaller id


def test_results_do_not_depend_on_workers_partitions_shard_split_or_read_order(tmp_path, monkeypatch):
    import pipeline.dedup.stage as stage_mod

    monkeypatch.setattr(stage_mod, "DOCS_PER_WORKER", {k: 1 for k in stage_mod.DOCS_PER_WORKER})  # real pools
    docs = corpus(seed=1)
    make_filtered(tmp_path / "a", [docs[0::2], docs[1::2]])
    run_dedup(tmp_path / "a", DedupConfig(partitions=1), workers=1)
    reference = outcome(tmp_path / "a")

    shuffled = list(docs)
    random.Random(9).shuffle(shuffled)
    make_filtered(tmp_path / "b", [shuffled[0:10], shuffled[10:11], shuffled[11:]])
    run_dedup(tmp_path / "b", DedupConfig(partitions=5), workers=2)
    assert outcome(tmp_path / "b") == reference


def test_the_same_seed_gives_the_same_clusters_twice(data, tmp_path):
    run_dedup(data, CONFIG)
    first = outcome(data)
    shutil.rmtree(data / "dedup")
    shutil.rmtree(data / "corpus")
    run_dedup(data, CONFIG)
    assert outcome(data) == first


def test_accounting_identity_holds_per_shard_and_in_the_manifest(data):
    m = run_dedup(data, CONFIG)
    for shard in m["shards"]:
        assert shard["docs_in"] == shard["kept"] + sum(shard["dropped"].values())
        rows = {o["path"].split("/")[0]: o["rows"] for o in shard["outputs"]}
        assert rows[f"{shard['shard']}.parquet"] == shard["kept"]
        assert rows["rejected"] == sum(shard["dropped"].values())
    t = m["totals"]
    assert t["docs_in"] == len(corpus()) == load_manifest(data / "filtered")["totals"]["kept"]
    d = m["dedup"]
    assert t["dropped"] == {"exact_duplicate": d["exact_duplicate"], "near_duplicate": d["near_duplicate"]}
    hist = d["cluster_size_histogram"]
    assert sum(int(size) * n for size, n in hist.items() if "-" not in size) == t["docs_in"]
    assert d["clusters"] == t["kept"] - hist["1"]


def test_progress_covers_all_four_phases_as_one_run(data):
    seen = []
    run_dedup(data, CONFIG, on_progress=seen.append)
    total = 2 * 3 + CONFIG.partitions + 1  # shards twice, partitions, the cluster task
    assert {p.shards_total for p in seen} == {total}
    assert [p.shards_done for p in seen] == sorted(p.shards_done for p in seen)
    assert seen[-1].shards_done == total
    assert seen[-1].docs == 2 * len(corpus())  # read once for signatures, once to write the corpus


def test_rerun_skips_everything_and_a_changed_config_needs_force(data):
    run_dedup(data, CONFIG)
    corpus_file = data / "corpus" / "shard-00.parquet"
    mtime = corpus_file.stat().st_mtime_ns
    run_dedup(data, CONFIG)
    assert corpus_file.stat().st_mtime_ns == mtime  # nothing redone

    changed = DedupConfig(partitions=3, threshold=0.9)
    with pytest.raises(StageConfigChanged, match="threshold"):
        run_dedup(data, changed)
    m = run_dedup(data, changed, force=True)
    assert m["config"]["threshold"] == 0.9
    assert (data / "dedup" / "signatures" / "_receipts" / "shard-00.json").exists()  # phase 1 reused


def test_a_run_killed_midway_resumes_to_the_same_result(data, tmp_path, monkeypatch):
    import pipeline.dedup.stage as stage_mod

    clean = tmp_path / "clean"
    shutil.copytree(data / "filtered", clean / "filtered")
    shutil.copytree(data / "src", clean / "src")
    run_dedup(clean, CONFIG)

    real_apply = stage_mod.apply_shard

    def crashing_apply(task, stage_dir, config):
        if task.name == "shard-01":
            raise KeyboardInterrupt("killed")
        return real_apply(task, stage_dir, config)

    monkeypatch.setattr(stage_mod, "apply_shard", crashing_apply)
    with pytest.raises(KeyboardInterrupt):
        run_dedup(data, CONFIG)
    assert not (data / "corpus" / "manifest.json").exists()
    monkeypatch.setattr(stage_mod, "apply_shard", real_apply)
    run_dedup(data, CONFIG)
    assert outcome(data) == outcome(clean)


def test_empty_shards_wordless_and_short_documents(tmp_path):
    make_filtered(
        tmp_path,
        [[], [Document("p1", "!!! ..."), Document("p2", "?"), Document("s1", "Hello there"),
              Document("s2", "hello, THERE."), Document("s3", "hello you")]],
    )
    m = run_dedup(tmp_path, CONFIG)
    kept, removed = outcome(tmp_path)
    assert set(kept) == {"p1", "s1", "s3"}  # no words at all: exact duplicates of each other
    assert removed == {"p2": ("exact_duplicate", removed["p2"][1], "p1"),
                       "s2": ("exact_duplicate", removed["s2"][1], "s1")}
    assert m["totals"]["docs_in"] == 5


def test_missing_upstream_stage_names_the_command_to_run(tmp_path):
    with pytest.raises(InputError, match="make filter"):
        run_dedup(tmp_path, CONFIG)


def test_duplicate_ids_across_shards_are_an_input_error(tmp_path):
    make_filtered(tmp_path, [[Document("same", "one two three")], [Document("same", "four five six")]])
    with pytest.raises(InputError, match="'same'"):
        run_dedup(tmp_path, CONFIG)


@pytest.mark.parametrize(
    "kwargs, option",
    [({"bands": 50, "rows": 3}, "bands"), ({"threshold": 0}, "threshold"), ({"ngram": 0}, "ngram"),
     ({"partitions": 0}, "partitions")],
)
def test_invalid_config_names_the_option(kwargs, option):
    with pytest.raises(ConfigError) as err:
        DedupConfig(**kwargs)
    assert err.value.option == option


def test_show_finds_a_cluster_by_member_or_cluster_id(data):
    run_dedup(data, CONFIG)
    _, removed = outcome(data)
    reason, cluster, rep = removed["orig-04"]  # its 2 %-edited copy near-04 has the smaller id
    assert rep == "near-04"
    view = find_cluster(data, "orig-04")
    assert view.cluster == cluster and view.representative.id == rep
    assert find_cluster(data, cluster).cluster == cluster
    member = next(m for m in view.members if m.id == "orig-04")
    assert abs(member.jaccard_true - 0.89) < 0.05 and member.jaccard_estimate >= 0.55
    text = format_cluster(view, width=100, max_lines=3)
    assert "orig-04" in text and rep in text and "«" in text
    with pytest.raises(InputError, match="neither a cluster"):
        find_cluster(data, "orig-01")  # unique document: no cluster


def test_true_jaccard_of_word_trigrams():
    assert jaccard(shingle_set("a b c d", 3), shingle_set("A, b c. d e", 3)) == 2 / 3


def test_small_phases_run_in_process_and_large_ones_get_the_workers():
    from pipeline.dedup.stage import phase_workers

    assert phase_workers("signatures", 8, 6, 13_000) == 1
    assert phase_workers("signatures", 8, 6, 10_000_000) == 6  # never more workers than tasks
    assert phase_workers("partitions", 2, 8, 105_000, 8) == 2
    assert phase_workers("apply", 2, 48, 20_000) == 1


def test_cli_dedup_and_dedup_show(data):
    from cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["dedup", "--data", str(data), "--workers", "1", "--partitions", "3"])
    assert result.exit_code == 0, result.output
    assert "dropped: exact_duplicate" in result.output and "cluster size" in result.output
    result = runner.invoke(main, ["dedup-show", "--data", str(data), "exact-00", "--width", "90"])
    assert result.exit_code == 0, result.output
    assert "exact_duplicate" in result.output
    result = runner.invoke(main, ["dedup", "--data", str(data), "--workers", "1", "--bands", "99"])
    assert result.exit_code != 0 and "invalid bands" in result.output


def test_labelled_copies_in_a_real_crawl_file_join_their_originals(shared_data, tmp_path):
    from pipeline.readers import read_file

    labels = {}
    for line in open(shared_data / "crawl-dev" / "labels.jsonl", encoding="utf-8"):
        row = json.loads(line)
        labels[row["uri"]] = row
    shards = [
        [d for d in read_file(shared_data / "crawl-dev" / f"crawl-0000{i}.warc.wet.gz") if isinstance(d, Document)]
        for i in (4, 5)
    ]
    make_filtered(tmp_path, shards)
    run_dedup(tmp_path, CONFIG)
    members = {}
    for path in (tmp_path / "dedup" / "clusters").glob("*.parquet"):
        members.update((row["id"], row["cluster"]) for row in pq.read_table(path).to_pylist())
    docs = [d for shard in shards for d in shard]
    by_url = {d.url: d.id for d in docs}
    pairs = [(d.id, by_url[labels[d.url]["cluster"]]) for d in docs
             if "edit" in labels[d.url] and labels[d.url]["cluster"] in by_url]
    assert len(pairs) == 100
    caught = sum(a in members and members[a] == members.get(b) for a, b in pairs)
    assert caught >= 0.97 * len(pairs)


def test_an_id_twice_in_one_shard_names_the_raw_file_and_what_to_do(tmp_path):
    docs = corpus()[:5]
    make_filtered(tmp_path, [docs + [Document(docs[0].id, "other text " * 30, source="users.jsonl")]])
    with pytest.raises(InputError) as err:
        run_dedup(tmp_path, CONFIG)
    msg = str(err.value)
    assert f"{docs[0].id!r} appears twice" in msg and "users.jsonl" in msg
    assert "unique ids" in msg and "upstream stage" not in msg


def test_an_id_in_two_shards_says_the_same_file_is_probably_listed_twice(tmp_path):
    docs = corpus()[:5]
    make_filtered(tmp_path, [docs, docs[:1]])
    with pytest.raises(InputError) as err:
        run_dedup(tmp_path, CONFIG)
    msg = str(err.value)
    assert "shard-00 and shard-01" in msg and "SOURCE twice" in msg and "upstream stage" not in msg


@pytest.mark.parametrize("command", ["dedup", "shards"])
def test_negative_workers_are_refused_naming_the_option(tmp_path, command):
    from cli import main

    result = CliRunner().invoke(main, [command, "--data", str(tmp_path), "--workers", "-2"])
    assert result.exit_code == 2 and "Invalid value for '--workers'" in result.output
