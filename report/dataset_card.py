"""Cards in the Hugging Face format: the corpus's dataset card (DATA/corpus/README.md, `crawlgpt card`, written
by `make corpus` and `make shards`), and the data-pipeline summary that the model card (`crawlgpt export`,
report/model_card.py) repeats.

Everything comes from the stage manifests: the source and its kind, the languages kept, the documents into
and out of each stage with every drop reason, the dedup, decontamination and PII settings, the token
counts. A card is YAML metadata between `---` lines, then Markdown; `yaml_block` writes the YAML (only
mappings, lists, strings, numbers and booleans; strings JSON-quoted, which YAML reads as they are).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.documents import text_bytes
from pipeline.errors import InputError
from formats.manifest import atomic_path, load_manifest
from pipeline.stage import manifest_outputs

CARD_NAME = "README.md"
#: Document stages in pipeline order: (folder, what it does).
STAGES = (("filtered", "filter"), ("corpus", "dedup"), ("decontaminated", "decontaminate"), ("redacted", "pii"))
#: Hugging Face size categories (upper bounds of the number of documents).
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def yaml_block(value: Any, indent: int = 0) -> str:
    """`value` as block YAML (the subset cards need)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{yaml_block(v, indent + 2)}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for v in value:
            if isinstance(v, (dict, list)) and v:
                inner = yaml_block(v, indent + 2)
                lines.append(f"{pad}- {inner.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(v)}")
        return "\n".join(lines)
    return f"{pad}{_scalar(value)}"


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(str(v), ensure_ascii=False)


def size_category(n: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1B"


def corpus_summary(data_dir: str | Path) -> dict:
    """What the manifests of a DATA folder say about its corpus (see the module docstring)."""
    data_dir = Path(data_dir)
    stages = []
    for folder, label in STAGES:
        m = load_manifest(data_dir / folder)
        if isinstance(m, dict) and "totals" in m:
            stages.append({"folder": folder, "stage": label, "config": m.get("config", {}), "totals": m["totals"],
                           "input": m.get("input")})
    if not stages:
        raise InputError(f"{data_dir} has no finished document stage; run `make corpus DATA={data_dir}` first")
    raw = load_manifest(data_dir / "raw") or {}
    final = stages[-1]
    final_manifest = load_manifest(data_dir / final["folder"])
    files = [data_dir / final["folder"] / p for p in manifest_outputs(final_manifest, "") if not p.startswith("rejected/")]
    shards = load_manifest(data_dir / "shards") or {}
    return {
        "source": raw.get("source", "unknown"), "source_kind": raw.get("source_kind", "unknown"),
        "source_files": raw.get("totals", {}).get("files", 0), "source_bytes": raw.get("totals", {}).get("bytes", 0),
        "langs": list(stages[0]["config"].get("langs", [])) if stages[0]["stage"] == "filter" else [],
        "stages": stages, "final_folder": final["folder"], "documents": final["totals"]["kept"],
        "text_bytes": text_bytes(p for p in files if p.is_file()),
        "tokens": shards.get("totals", {}).get("extra", {}).get("tokens"),
    }


def licence_note(summary: dict) -> str:
    if summary["source_kind"] == "crawl":
        return (f"Common Crawl {summary['source']}: the Common Crawl terms of use "
                "(https://commoncrawl.org/terms-of-use); each page's content belongs to its owners.")
    return (f"{summary['source']} ({summary['source_kind']}): no licence is recorded by the pipeline; "
            "the terms of the source apply, and each page's content belongs to its owners.")


def pipeline_markdown(summary: dict) -> str:
    """The data pipeline in brief: stages with counts and reasons, and their settings (for both cards)."""
    rows = ["| stage | documents in | kept | dropped (by reason) |", "|---|---:|---:|---|"]
    for s in summary["stages"]:
        t = s["totals"]
        reasons = {**t["dropped"], **{f"unreadable:{k}": v for k, v in t["unreadable"].items()}}
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none"
        rows.append(f"| {s['stage']} | {t['docs_in']:,} | {t['kept']:,} | {why} |")
    lines = ["\n".join(rows), ""]
    by_stage = {s["stage"]: s for s in summary["stages"]}
    if "filter" in by_stage:
        c = by_stage["filter"]["config"]
        lines.append(f"- **Filter**: fastText language ID (keep {', '.join(c.get('langs', []))}, score >= "
                     f"{c.get('min_lang_score')}), rule families {', '.join(c.get('rules', []))} (Gopher, C4, FineWeb "
                     f"thresholds), quality classifier: {'yes' if c.get('quality_model') else 'none'}.")
    if "dedup" in by_stage:
        c = by_stage["dedup"]["config"]
        lines.append(f"- **Dedup**: MinHash over word {c.get('ngram')}-grams, {c.get('num_perm')} permutations, "
                     f"{c.get('bands')} bands x {c.get('rows')} rows, Jaccard threshold {c.get('threshold')}; "
                     "one document kept per cluster.")
    if "decontaminate" in by_stage:
        c = by_stage["decontaminate"]["config"]
        names = [Path(b.partition("=")[2] or b).name for b in c.get("benchmarks", [])]
        lines.append(f"- **Decontamination**: documents sharing a {c.get('ngram')}-gram with {', '.join(names)} "
                     "removed.")
    else:
        lines.append("- **Decontamination**: not run.")
    if "pii" in by_stage:
        e = by_stage["pii"]["totals"]["extra"]
        lines.append(f"- **PII**: e-mail addresses ({e.get('pii_email', 0):,}) and public IPv4 ({e.get('pii_ipv4', 0):,}) "
                     f"/ IPv6 ({e.get('pii_ipv6', 0):,}) addresses replaced with fixed placeholders in "
                     f"{e.get('pii_documents', 0):,} documents; names, phone numbers and obfuscated addresses are not.")
    else:
        lines.append("- **PII**: not redacted (run with `PII=1`); the text may hold e-mail and IP addresses.")
    return "\n".join(lines)


def dataset_card(data_dir: str | Path) -> str:
    s = corpus_summary(data_dir)
    meta = {
        "pretty_name": f"crawlgpt corpus from {Path(str(s['source'])).name}",
        "license": "other",
        "language": s["langs"] or ["multilingual"],
        "size_categories": [size_category(s["documents"])],
        "task_categories": ["text-generation"],
        "tags": ["crawlgpt", "web", "common-crawl" if s["source_kind"] == "crawl" else "local-files"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{s['final_folder']}/*.parquet"}]}],
    }
    tokens = f", {s['tokens']:,} tokens in DATA/shards" if s.get("tokens") else ""
    return (f"---\n{yaml_block(meta)}\n---\n\n# {meta['pretty_name']}\n\n"
            f"A web-text corpus made by crawlgpt: {s['documents']:,} documents, {s['text_bytes'] / 1e6:,.1f} MB of "
            f"text{tokens}, in `DATA/{s['final_folder']}/*.parquet` (columns `id`, `text`, `url`, `source`, `meta`).\n\n"
            f"## Source and licence\n\n{s['source_files']:,} files, {s['source_bytes'] / 1e6:,.1f} MB, from "
            f"{licence_note(s)}\n\n## How it was made\n\n{pipeline_markdown(s)}\n\n"
            "Dropped documents are kept for inspection in each stage's `rejected/` folder with their reason and the "
            "value that failed (`crawlgpt report` shows samples).\n\n## Loading\n\n```python\n"
            "from datasets import load_dataset\n\n"
            f"ds = load_dataset(\"parquet\", data_files=\"DATA/{s['final_folder']}/*.parquet\", split=\"train\")\n"
            "```\n\n## Limitations\n\nFiltered by heuristics and a small classifier: web text keeps its biases, "
            "errors and offensive content; language ID is less reliable on short documents.\n")


def write_dataset_card(data_dir: str | Path) -> Path:
    """Write DATA/corpus/README.md atomically; return its path."""
    path = Path(data_dir) / "corpus" / CARD_NAME
    text = dataset_card(data_dir)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
