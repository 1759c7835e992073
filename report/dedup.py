"""The largest duplicate clusters: their members, and what differs between the kept one and each copy."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dedup.clusters import REPRESENTATIVE, histogram_rows
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.show import jaccard, shingle_set
from pipeline.dedup.stage import UPSTREAM_DIR, WORK_DIR
from pipeline.documents import read_document_rows
from pipeline.errors import InputError
from formats.manifest import load_manifest
from report.data import manifest
from report.page import Section, esc, table
from pipeline.stage import manifest_outputs, stage_documents

log = logging.getLogger(__name__)

#: Clusters shown, members listed per cluster (the kept one first), copies compared with the kept one.
CLUSTERS = 5
MEMBERS = 8
COPIES = 2
#: Words of each text compared (difflib is quadratic in the worst case).
DIFF_WORDS = 400


def section(data_dir: Path) -> Section | None:
    m = manifest(data_dir, "corpus")
    if m is None or "dedup" not in m:
        return None
    d = m["dedup"]
    parts = [table(["cluster size", "clusters"], histogram_rows(d["cluster_size_histogram"]))]
    largest = [c["cluster"] for c in d.get("largest_clusters", [])[:CLUSTERS]]
    try:
        members = cluster_members(data_dir, largest, MEMBERS)
    except InputError as exc:
        log.warning("report: duplicate clusters not shown (%s)", exc)
        members = {}
    ngram = int(m.get("config", {}).get("ngram", DedupConfig().ngram))
    for cluster in largest:
        parts.append(_cluster_html(cluster, members.get(cluster, []), ngram, d))
    body = (f"<p>{d['clusters']:,} clusters hold {d['docs_in_clusters']:,} documents; removed "
            f"{d['exact_duplicate']:,} exact and {d['near_duplicate']:,} near duplicates.</p>" + "".join(parts))
    return Section("dedup", "Duplicate clusters", body)


def cluster_members(data_dir: Path, clusters: list[str], per_cluster: int) -> dict[str, list[dict]]:
    """For each cluster id: its representative first, then up to `per_cluster - 1` removed members, each a
    dict of the assignment row plus `text` and `url`. One pass over the assignment files (two columns of
    the documents in clusters), then only the chosen documents' rows are read."""
    clusters_dir = data_dir / WORK_DIR / "clusters"
    cm = load_manifest(clusters_dir)
    if cm is None:
        raise InputError(f"{clusters_dir} has no manifest; run `make dedup`")
    chosen: dict[str, list[dict]] = {c: [] for c in clusters}
    for rel in manifest_outputs(cm, ""):
        t = pq.read_table(clusters_dir / rel)
        t = t.filter(pc.is_in(t["cluster"], pa.array(clusters, pa.string())))
        for row in t.to_pylist():
            rows = chosen[row["cluster"]]
            if row["reason"] == REPRESENTATIVE or len(rows) < per_cluster - 1:
                rows.append({**row, "shard": Path(rel).stem})
    inputs = {p.stem: p for p in stage_documents(data_dir / UPSTREAM_DIR, make_target="filter")}
    wanted: dict[str, list[str]] = {}
    for rows in chosen.values():
        for r in rows:
            wanted.setdefault(r["shard"], []).append(r["id"])
    texts = {}
    for shard, ids in wanted.items():
        if shard in inputs:
            texts.update({r["id"]: r for r in read_document_rows(inputs[shard], ids, ["id", "text", "url"])})
    return {c: sorted((({**r, **texts[r["id"]]}) for r in rows if r["id"] in texts),
                      key=lambda r: (r["reason"] != REPRESENTATIVE, -float(r["jaccard"]), r["id"]))
            for c, rows in chosen.items()}


def _cluster_html(cluster: str, members: list[dict], ngram: int, d: dict) -> str:
    size = next((c["size"] for c in d.get("largest_clusters", []) if c["cluster"] == cluster), len(members))
    out = [f"<h3>cluster {esc(cluster)}: {size:,} documents</h3>"]
    if not members or members[0]["reason"] != REPRESENTATIVE:
        return out[0] + "<p class=\"muted\">its documents are no longer in DATA/filtered (rerun `make dedup`)</p>"
    kept = members[0]
    kept_shingles = shingle_set(kept["text"], ngram)
    rows = [(r["reason"], r["id"], len(r["text"].split()), round(jaccard(shingle_set(r["text"], ngram), kept_shingles), 3),
             r.get("url") or "") for r in members]
    out.append(table(["member", "id", "words", f"Jaccard ({ngram}-grams)", "url"], rows))
    if size > len(members):
        out.append(f"<p class=\"muted\">{size - len(members):,} more members not shown.</p>")
    for copy in members[1:1 + COPIES]:
        out.append(f"<p class=\"muted\">kept {esc(kept['id'])} vs {esc(copy['reason'])} {esc(copy['id'])}: "
                   "<del>only in the kept one</del> <ins>only in the copy</ins></p>")
        out.append(word_diff(kept["text"], copy["text"]))
    return "".join(out)


def word_diff(kept: str, copy: str) -> str:
    """Both texts' first words as one escaped block: words only in `kept` in <del>, only in `copy` in <ins>."""
    a, b = kept.split()[:DIFF_WORDS], copy.split()[:DIFF_WORDS]
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(esc(" ".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{esc(' '.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{esc(' '.join(b[j1:j2]))}</ins>")
    more = " …" if len(kept.split()) > DIFF_WORDS or len(copy.split()) > DIFF_WORDS else ""
    return f"<pre>{' '.join(out)}{more}</pre>"
