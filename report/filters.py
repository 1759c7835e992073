"""The filter stage seen from its outputs: languages, the distribution of each rule's measured value with its
threshold, and for each drop reason a few of the documents it dropped (text escaped).

The filter records, for a dropped document, the value that failed (`score`) and, for every document,
`lang`/`lang_score` (and `quality_score` with a classifier) in `meta`. Kept documents do not carry the rule
statistics, so a rule's histogram shows the dropped side only, beside the threshold that cut it; the
language and quality scores are shown for kept and dropped documents together. All from samples.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from report import svg
from report.data import manifest, meta, outputs, sample_rows
from report.page import Section, esc, table, text_block

#: Rows sampled from the kept and from the rejected files (spread over the shards).
SAMPLE_ROWS = 4000
#: Dropped documents shown per reason.
DOCS_PER_REASON = 3
#: Characters of each shown document.
DOC_CHARS = 1200
#: Rejected rows read at most while looking for examples of every reason (rare reasons may go without).
MAX_SCAN_ROWS = 50_000


def threshold(reason: str, m: dict) -> float | None:
    """The threshold behind a reason code, from the recorded config: `gopher_min_words` ->
    config.gopher_quality.min_words, `lang_low_score` -> min_lang_score, and so on; None if unknown."""
    config = m.get("config", {})
    if reason == "lang_low_score":
        return config.get("min_lang_score")
    if reason == "quality_classifier_low":
        return (m.get("upstream", {}).get("quality_settings") or {}).get("threshold")
    for family, values in config.items():
        if not isinstance(values, dict):
            continue
        prefix = family.split("_")[0] + "_"
        name = reason.removeprefix(prefix)
        value = values.get(name)
        if reason.startswith(prefix) and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def sections(data_dir: Path) -> list[Section]:
    m = manifest(data_dir, "filtered")
    if m is None or "totals" not in m:
        return []
    kept = list(sample_rows(outputs(data_dir, "filtered", m, rejected=False), ["meta"], SAMPLE_ROWS))
    rejected_files = outputs(data_dir, "filtered", m, rejected=True)
    dropped = list(sample_rows(rejected_files, ["reason", "score", "meta"], SAMPLE_ROWS))
    out = [_languages(kept, dropped), _distributions(kept, dropped, m)]
    samples = dropped_documents(rejected_files, m["totals"]["dropped"], DOCS_PER_REASON)
    decontaminated = manifest(data_dir, "decontaminated")
    if decontaminated is not None and "totals" in decontaminated:  # benchmark_overlap_<task> reasons
        samples.update(dropped_documents(outputs(data_dir, "decontaminated", decontaminated, rejected=True),
                                         decontaminated["totals"]["dropped"], DOCS_PER_REASON))
    out.append(Section("dropped", "Dropped documents, by reason", _samples_html(samples)))
    return out


def _languages(kept: list[dict], dropped: list[dict]) -> Section:
    seen, kept_langs = Counter(), Counter()
    for row in kept:
        lang = meta(row).get("lang", "?")
        seen[lang] += 1
        kept_langs[lang] += 1
    for row in dropped:
        seen[meta(row).get("lang", "?")] += 1
    top = seen.most_common(25)
    n = max(sum(seen.values()), 1)
    rows = [(lang, c, f"{100 * c / n:.1f}%", kept_langs[lang]) for lang, c in top]
    body = (f"<p class=\"muted\">From a sample of {n:,} documents read by the filter (lid.176 labels).</p>"
            + svg.bars([r[0] for r in rows], [r[1] for r in rows], "documents per language (sample)")
            + table(["language", "documents", "share", "of them kept"], rows[:10]))
    return Section("languages", "Languages", body)


def _distributions(kept: list[dict], dropped: list[dict], m: dict) -> Section:
    charts = []
    for key, reason in (("lang_score", "lang_low_score"), ("quality_score", "quality_classifier_low")):
        values = [v for row in kept + dropped if isinstance(v := meta(row).get(key), (int, float))]
        if values:
            charts.append(svg.histogram(values, f"{key} (kept and dropped)", threshold(reason, m)))
    by_reason = defaultdict(list)
    for row in dropped:
        if row.get("score") is not None and math.isfinite(row["score"]) and not row["reason"].startswith("unreadable"):
            by_reason[row["reason"]].append(row["score"])
    for reason, values in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        if reason not in ("lang_not_kept",):
            charts.append(svg.histogram(values, f"{reason} (dropped: {len(values):,})", threshold(reason, m)))
    body = ("<p class=\"muted\">Red line: the threshold in the recorded filter config. A rule's histogram shows "
            "the value measured on the documents it dropped (kept documents do not record it).</p>"
            f"<div class=\"charts\">{''.join(charts)}</div>")
    return Section("distributions", "Rule statistics and scores", body)


def dropped_documents(files: list[Path], counts: dict[str, int], per_reason: int) -> dict[str, list[dict]]:
    """Up to `per_reason` dropped documents for each reason, read file by file until every reason has
    enough (or the files run out)."""
    want = {r for r, n in counts.items() if n}
    found: dict[str, list[dict]] = defaultdict(list)
    scanned = 0
    for path in files:
        for row in sample_rows([path], ["id", "url", "text", "reason", "score"], MAX_SCAN_ROWS - scanned):
            scanned += 1
            reason = row.get("reason") or "?"
            if reason in want and len(found[reason]) < per_reason:
                found[reason].append(row)
                if len(found[reason]) == per_reason:
                    want.discard(reason)
            if not want:
                return dict(found)
        if scanned >= MAX_SCAN_ROWS:
            break
    return dict(found)


def _samples_html(samples: dict[str, list[dict]]) -> str:
    parts = []
    for reason in sorted(samples):
        docs = []
        for row in samples[reason]:
            score = row.get("score")
            value = f"{score:.4g}" if isinstance(score, float) and math.isfinite(score) else "n/a"
            docs.append(f"<div class=\"doc\"><b>value {esc(value)}</b> · <span class=\"muted\">{esc(row.get('id'))} "
                        f"{esc(row.get('url') or '')}</span>{text_block(row.get('text') or '', DOC_CHARS)}</div>")
        parts.append(f"<details><summary><b>{esc(reason)}</b> ({len(docs)} shown)</summary>{''.join(docs)}</details>")
    return "".join(parts) or "<p>No document was dropped.</p>"
