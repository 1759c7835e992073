"""Inspect one duplicate cluster: its members, their similarity to the representative, their texts.

`find_cluster` accepts a cluster id or the id of any member (representative or removed copy) and reads
only the assignment files and the rows of the member documents. `format_cluster` lays the representative
and each member side by side, marking words that differ in «guillemets», under a table with the MinHash
estimate the stage used and the exact Jaccard similarity of their shingle sets.
"""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.documents import read_document_rows
from pipeline.errors import InputError
from formats.manifest import load_manifest
from pipeline.stage import format_table, manifest_outputs, stage_documents

from .clusters import REPRESENTATIVE, histogram_rows
from .normalize import normalize_text, normalize_texts
from .config import DedupConfig
from .stage import OUTPUT_DIR, UPSTREAM_DIR, WORK_DIR

#: Words compared by the side-by-side diff (difflib is quadratic in the worst case).
MAX_DIFF_WORDS = 3000


@dataclass
class ClusterMember:
    id: str
    reason: str  # representative, exact_duplicate or near_duplicate
    jaccard_estimate: float  # MinHash estimate used by the stage (vs the representative)
    jaccard_true: float  # exact Jaccard similarity of the shingle sets (vs the representative)
    words: int
    url: str
    text: str


@dataclass
class ClusterView:
    cluster: str
    ngram: int
    members: list[ClusterMember]  # the representative first, then by decreasing similarity

    @property
    def representative(self) -> ClusterMember:
        return self.members[0]


def shingle_set(text: str, ngram: int) -> set[tuple[str, ...]]:
    """The word n-grams of a text's normalised form, as the stage defines them (strings, not hashes)."""
    words = normalize_text(text).split()
    if len(words) < ngram:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def find_cluster(data_dir: str | Path, ident: str) -> ClusterView:
    """The cluster with id `ident`, or the one that document `ident` belongs to."""
    data_dir = Path(data_dir)
    corpus = load_manifest(data_dir / OUTPUT_DIR)
    clusters_dir = data_dir / WORK_DIR / "clusters"
    clusters_manifest = load_manifest(clusters_dir)
    if corpus is None or clusters_manifest is None:
        raise InputError(f"{data_dir / OUTPUT_DIR} has no finished dedup stage. Run `make dedup` first.")
    ngram = int(corpus["config"].get("ngram", DedupConfig().ngram))
    assignment_files = [clusters_dir / p for p in manifest_outputs(clusters_manifest, "")]

    cluster = None
    for path in assignment_files:
        t = pq.read_table(path, columns=["id", "cluster"])
        hit = pc.or_(pc.equal(t["id"], ident), pc.equal(t["cluster"], ident))
        if pc.any(hit).as_py():
            cluster = t.filter(hit)["cluster"][0].as_py()
            break
    if cluster is None:
        raise InputError(
            f"{ident!r} is neither a cluster id nor a document with duplicates in {data_dir}. A document "
            "without duplicates is in no cluster; `crawlgpt dedup-show --data DATA` lists the largest clusters."
        )

    rows, shard_of = [], {}
    for path in assignment_files:
        t = pq.read_table(path)
        t = t.filter(pc.equal(t["cluster"], cluster))
        for row in t.to_pylist():
            rows.append(row)
            shard_of[row["id"]] = path.stem
    texts = _texts(data_dir, shard_of)
    rep_id = rows[0]["representative"]
    rep_shingles = shingle_set(texts[rep_id]["text"], ngram)
    members = []
    for row in rows:
        doc = texts[row["id"]]
        members.append(
            ClusterMember(
                id=row["id"],
                reason=row["reason"],
                jaccard_estimate=float(row["jaccard"]),
                jaccard_true=jaccard(shingle_set(doc["text"], ngram), rep_shingles),
                words=len(normalize_text(doc["text"]).split()),
                url=doc.get("url") or "",
                text=doc["text"],
            )
        )
    members.sort(key=lambda m: (m.reason != REPRESENTATIVE, -m.jaccard_true, m.id))
    return ClusterView(cluster=cluster, ngram=ngram, members=members)


def _texts(data_dir: Path, shard_of: dict[str, str]) -> dict[str, dict]:
    """id -> {text, url} of the given documents, read from the dedup stage's input shards."""
    inputs = {p.stem: p for p in stage_documents(data_dir / UPSTREAM_DIR, make_target="filter")}
    out: dict[str, dict] = {}
    for shard in sorted(set(shard_of.values())):
        ids = [i for i, s in shard_of.items() if s == shard]
        out.update({row["id"]: row for row in read_document_rows(inputs[shard], ids, ["id", "text", "url"])})
    missing = sorted(set(shard_of) - set(out))
    if missing:
        raise InputError(
            f"documents {missing[:3]} of this cluster are missing from {data_dir / UPSTREAM_DIR}; the filter "
            "stage was rerun after dedup. Rerun `make dedup`."
        )
    return out


def _marked_words(left: str, right: str) -> tuple[list[str], list[str]]:
    """The words of both texts, those a word diff of their normalised forms does not match wrapped in «»."""
    lw, rw = left.split()[:MAX_DIFF_WORDS], right.split()[:MAX_DIFF_WORDS]
    keys = normalize_texts(pa.array(lw + rw, pa.large_string())).to_pylist()
    lk, rk = keys[: len(lw)], keys[len(lw) :]
    lo, ro = list(lw), list(rw)
    matcher = difflib.SequenceMatcher(a=lk, b=rk, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        for i in range(i1, i2):
            lo[i] = f"«{lw[i]}»"
        for j in range(j1, j2):
            ro[j] = f"«{rw[j]}»"
    return lo, ro


def side_by_side(left: str, right: str, width: int, max_lines: int) -> str:
    """Two texts in two columns of `width` characters each, changed words marked, at most max_lines."""
    lw, rw = _marked_words(left, right)
    lcol = textwrap.wrap(" ".join(lw), width) or [""]
    rcol = textwrap.wrap(" ".join(rw), width) or [""]
    n = max(len(lcol), len(rcol))
    lines = [
        f"{(lcol[i] if i < len(lcol) else ''):<{width}} | {rcol[i] if i < len(rcol) else ''}"
        for i in range(min(n, max_lines))
    ]
    if n > max_lines:
        lines.append(f"{'...':<{width}} | ... ({n - max_lines} more lines)")
    return "\n".join(lines)


def format_cluster(view: ClusterView, width: int = 160, max_lines: int = 12) -> str:
    """The cluster as text: a member table, then the representative beside each other member."""
    header = ["member", "id", "words", "est. Jaccard", f"true Jaccard ({view.ngram}-grams)", "url"]
    rows = [
        (m.reason, m.id, m.words, f"{m.jaccard_estimate:.3f}", f"{m.jaccard_true:.3f}", m.url)
        for m in view.members
    ]
    out = [f"cluster {view.cluster}: {len(view.members)} documents, kept {view.representative.id}", ""]
    out.append(format_table(rows, header))
    col = max(20, (width - 3) // 2)
    rep = view.representative
    for m in view.members[1:]:
        out.append("")
        out.append(
            f"{('kept: ' + rep.id)[:col]:<{col}} | removed ({m.reason}, est. J {m.jaccard_estimate:.3f}, "
            f"true J {m.jaccard_true:.3f}): {m.id}"
        )
        out.append(f"{'-' * col}-+-{'-' * col}")
        out.append(side_by_side(rep.text, m.text, col, max_lines))
    return "\n".join(out)


def cluster_overview(data_dir: str | Path) -> str:
    """The corpus manifest's cluster-size histogram and largest clusters, as text."""
    corpus = load_manifest(Path(data_dir) / OUTPUT_DIR)
    if corpus is None or "dedup" not in corpus:
        raise InputError(f"{Path(data_dir) / OUTPUT_DIR} has no finished dedup stage. Run `make dedup` first.")
    d = corpus["dedup"]
    out = [format_table(histogram_rows(d["cluster_size_histogram"]), ["cluster size", "clusters"]), ""]
    out.append(
        format_table([(c["cluster"], c["size"], c["representative"]) for c in d["largest_clusters"]],
                     ["largest clusters", "size", "representative"])
    )
    return "\n".join(out)
