"""The funnel: documents (and text bytes, from Parquet footers) into and out of every stage, and per reason."""

from __future__ import annotations

from pathlib import Path

from pipeline.documents import text_bytes
from report import svg
from report.data import document_stages, manifest, outputs
from report.page import Section, esc, table


def section(data_dir: Path) -> Section | None:
    stages = document_stages(data_dir)
    if not stages:
        return None
    rows, reasons = [], []
    raw = manifest(data_dir, "raw")
    if raw is not None and "files" in raw:
        rows.append(("download", "", "", f"{len(raw['files'])} files", f"{sum(f['bytes'] for f in raw['files']) / 1e6:,.1f} MB compressed"))
    for folder, label, m in stages:
        t = m["totals"]
        kept_bytes = text_bytes(outputs(data_dir, folder, m, rejected=False))
        dropped = sum(t["dropped"].values()) + sum(t["unreadable"].values())
        rows.append((label, t["docs_in"], t["kept"], dropped, f"{kept_bytes / 1e6:,.1f} MB of text kept"))
        for reason, n in list(t["dropped"].items()) + [(f"unreadable:{k}", v) for k, v in t["unreadable"].items()]:
            reasons.append((label, reason, n, f"{100 * n / max(t['docs_in'], 1):.1f}%"))
    shards = manifest(data_dir, "shards")
    if shards is not None and "split_totals" in shards:
        s = shards["split_totals"]
        docs = sum(v["documents"] for v in s.values())
        tokens = sum(v["tokens"] for v in s.values())
        rows.append(("shards", docs, docs, 0, f"{tokens:,} tokens"))
    reasons.sort(key=lambda r: -r[2])
    chart = svg.bars([f"{r[0]}: {r[1]}" for r in reasons], [r[2] for r in reasons], "documents dropped per reason")
    funnel_chart = svg.bars([r[0] for r in rows if isinstance(r[2], int)], [r[2] for r in rows if isinstance(r[2], int)],
                            "documents kept after each stage")
    body = (table(["stage", "documents in", "kept", "dropped", "size"], rows) + funnel_chart
            + "<h3>Drop reasons</h3>" + table(["stage", "reason", "documents", "share of stage input"], reasons)
            + chart + _pii_counts(stages))
    return Section("funnel", "Funnel", body)


def _pii_counts(stages: list[tuple[str, str, dict]]) -> str:
    for folder, _, m in stages:
        if folder == "redacted":
            e = m["totals"]["extra"]
            rows = [(k, e.get(f"pii_{k}", 0)) for k in ("email", "ipv4", "ipv6")]
            rows.append(("documents with any", e.get("pii_documents", 0)))
            return f"<h3>PII replaced ({esc(m.get('input', ''))} in)</h3>" + table(["kind", "replacements"], rows)
    return ""
