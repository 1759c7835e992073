"""The largest duplicate clusters: their members, and what differs between the kept one and each copy."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from pipeline.dedup.clusters import histogram_rows
from pipeline.dedup.show import find_cluster
from pipeline.errors import InputError
from pipeline.report.data import manifest
from pipeline.report.page import Section, esc, table

log = logging.getLogger(__name__)

#: Clusters shown, and copies compared with the kept document in each.
CLUSTERS = 5
COPIES = 2
#: Words of each text compared (difflib is quadratic in the worst case).
DIFF_WORDS = 400


def section(data_dir: Path) -> Section | None:
    m = manifest(data_dir, "corpus")
    if m is None or "dedup" not in m:
        return None
    d = m["dedup"]
    parts = [table(["cluster size", "clusters"], histogram_rows(d["cluster_size_histogram"]))]
    for c in d.get("largest_clusters", [])[:CLUSTERS]:
        try:
            view = find_cluster(data_dir, c["cluster"])
        except InputError as exc:
            log.warning("report: cluster %s not shown (%s)", c["cluster"], exc)
            continue
        rows = [(mm.reason, mm.id, mm.words, round(mm.jaccard_true, 3), mm.url) for mm in view.members]
        parts.append(f"<h3>cluster {esc(view.cluster)}: {len(view.members)} documents</h3>")
        parts.append(table(["member", "id", "words", f"Jaccard ({view.ngram}-grams)", "url"], rows))
        for copy in view.members[1:1 + COPIES]:
            parts.append(f"<p class=\"muted\">kept {esc(view.representative.id)} vs {esc(copy.reason)} "
                         f"{esc(copy.id)}: <del>only in the kept one</del> <ins>only in the copy</ins></p>")
            parts.append(word_diff(view.representative.text, copy.text))
    body = (f"<p>{d['clusters']:,} clusters hold {d['docs_in_clusters']:,} documents; removed "
            f"{d['exact_duplicate']:,} exact and {d['near_duplicate']:,} near duplicates.</p>" + "".join(parts))
    return Section("dedup", "Duplicate clusters", body)


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
