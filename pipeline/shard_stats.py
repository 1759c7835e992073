"""Statistics of a token-shard folder (`make stats`): what the trainer is about to read.

Works on any folder of token shards, including one copied to another machine: the files are found
through the folder's `manifest.json` (or, without one, every `*.arrow` below the folder), and each file
describes itself (see `formats.token_shards`). To show tokens as text it needs the tokenizer: an
explicit path, else the copy `make shards` puts in the folder, else the path recorded in the manifest;
a tokenizer whose hash differs from the shards' is not used (ids would decode to the wrong text), and
without one the report shows token ids.

Per shard and in total: documents, tokens, bytes on disk, tokens per document (mean, median, p99;
counting the end-of-text token), the end-of-text share of all tokens (1 / mean document length: a
high share means many tiny documents), the most frequent tokens, and one decoded sample document.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import InputError
from formats.manifest import atomic_path, listed_path, sha256_file
from pipeline.stage import format_table
from formats.token_shards import MANIFEST_NAME, ShardFile, open_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatsConfig:
    """What the stats report shows."""

    #: How many of the most frequent tokens to list.
    top_tokens: int = 20
    #: At most this many characters of the sample document are shown.
    sample_chars: int = 600
    #: Check every shard's size and sha256 against the manifest first (as pretrain does); off for speed.
    verify_checksums: bool = True


def find_shard_files(shards_dir: str | Path) -> list[tuple[str, Path]]:
    """(split, path) of every token shard in the folder: from the manifest if present, else by glob."""
    shards_dir = Path(shards_dir)
    manifest_path = shards_dir / MANIFEST_NAME
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if "splits" in manifest:
            try:
                return [(split, listed_path(shards_dir, rec["path"], manifest_path))
                        for split, recs in manifest["splits"].items() for rec in recs]
            except ValueError as exc:
                raise InputError(str(exc)) from exc
    files = sorted(shards_dir.rglob("*.arrow"))
    if not files:
        raise InputError(f"{shards_dir} holds no token shards (*.arrow); run `make shards` or point at a shards folder")
    return [(p.parent.name if p.parent != shards_dir else "", p) for p in files]


def verify_shard_files(shards_dir: Path) -> None:
    """InputError for the first shard whose size or sha256 differs from the manifest's record: a report on
    altered bytes would describe data that no longer matches what `make shards` wrote."""
    manifest_path = shards_dir / MANIFEST_NAME
    if not manifest_path.exists():
        log.warning("%s has no %s: shard checksums cannot be checked", shards_dir, MANIFEST_NAME)
        return
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for recs in manifest.get("splits", {}).values():
        for rec in recs:
            try:
                path = listed_path(shards_dir, rec["path"], manifest_path)
            except ValueError as exc:
                raise InputError(str(exc)) from exc
            if not path.is_file():
                raise InputError(f"token shard {path} listed in {manifest_path} is missing; run `make shards`")
            if path.stat().st_size != rec.get("bytes") or sha256_file(path) != rec.get("sha256"):
                raise InputError(
                    f"token shard {path} does not match its size and sha256 in {manifest_path}: its bytes were "
                    "altered or damaged since `make shards` wrote it. Run `make shards FORCE=1` to remake it "
                    "(--no-verify-shards skips this check)."
                )


def find_tokenizer(shards_dir: Path, tokenizer_hash: str, explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """The tokenizer.json to decode with, and a note saying which was chosen or why none was."""
    manifest_path = shards_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    candidates = [Path(explicit)] if explicit else []
    candidates += [shards_dir / manifest.get("tokenizer_file", "tokenizer.json")]
    if manifest.get("tokenizer_source"):
        candidates.append(Path(manifest["tokenizer_source"]))
    notes = []
    for c in candidates:
        if not c.exists():
            continue
        if sha256_file(c) != tokenizer_hash:
            notes.append(f"{c} is another tokenizer (hash differs)")
            continue
        return c, f"decoded with {c}"
    return None, "; ".join(notes) or "no tokenizer found (pass --tokenizer): showing token ids"


def _length_figures(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0, "max": 0}
    return {
        "mean": round(float(lengths.mean()), 2),
        "median": float(np.median(lengths)),
        "p99": round(float(np.percentile(lengths, 99)), 1),
        "max": int(lengths.max()),
    }


def _shard_counts(shard: ShardFile, vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in shard.chunks:
        counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    return counts


def compute_stats(shards_dir: str | Path, tokenizer: str | Path | None = None,
                  config: StatsConfig = StatsConfig()) -> tuple[dict, dict[str, np.ndarray]]:
    """The report as a JSON-able dict, and the document lengths per split (for the histogram)."""
    shards_dir = Path(shards_dir)
    files = find_shard_files(shards_dir)
    if config.verify_checksums:
        verify_shard_files(shards_dir)
    shards: list[dict] = []
    lengths_by_split: dict[str, list[np.ndarray]] = {}
    total_counts: np.ndarray | None = None
    first: ShardFile | None = None
    vocab_size = eot_id = tok_hash = None
    for split, path in files:
        shard = open_shard(path)
        meta = shard.meta
        if vocab_size is None:
            vocab_size, eot_id, tok_hash = meta["vocab_size"], meta["eot_id"], meta["tokenizer_hash"]
            total_counts = np.zeros(vocab_size, dtype=np.int64)
        elif (meta["vocab_size"], meta["tokenizer_hash"]) != (vocab_size, tok_hash):
            raise InputError(f"{path} was made with another tokenizer than {files[0][1]}: the folder mixes two runs; "
                             "rerun `make shards FORCE=1`")
        lengths = shard.document_lengths()
        lengths_by_split.setdefault(split, []).append(lengths)
        counts = _shard_counts(shard, vocab_size)
        total_counts += counts
        if first is None and shard.num_documents:
            first = shard
        shards.append({
            "split": split,
            "path": str(path.relative_to(shards_dir)),
            "documents": shard.num_documents,
            "tokens": shard.num_tokens,
            "bytes": path.stat().st_size,
            "tokens_per_document": _length_figures(lengths),
            "eot_share": round(int(counts[eot_id]) / max(shard.num_tokens, 1), 6),
        })
    all_lengths = {s: np.concatenate(v) for s, v in lengths_by_split.items()}
    every = np.concatenate(list(all_lengths.values())) if all_lengths else np.zeros(0, np.int64)
    n_tokens = sum(s["tokens"] for s in shards)
    total = {
        "files": len(shards),
        "documents": sum(s["documents"] for s in shards),
        "tokens": n_tokens,
        "bytes": sum(s["bytes"] for s in shards),
        "tokens_per_document": _length_figures(every),
        "eot_share": round(int(total_counts[eot_id]) / max(n_tokens, 1), 6) if total_counts is not None else 0.0,
        "by_split": {s: {"documents": int(len(v)), "tokens": int(v.sum())} for s, v in sorted(all_lengths.items())},
    }

    tok_path, tok_note = (None, "no shards") if tok_hash is None else find_tokenizer(shards_dir, tok_hash, tokenizer)
    codec = None
    if tok_path is not None:
        try:
            from pipeline.tokenizer_train import TextCodec

            codec = TextCodec(tok_path)
        except ImportError:
            tok_note = "the tokenizers library is not installed: showing token ids"
    top: list[dict] = []
    if total_counts is not None and n_tokens:
        order = np.argsort(-total_counts, kind="stable")[: config.top_tokens]
        for t in order:
            if total_counts[t] == 0:
                break
            top.append({"id": int(t), "count": int(total_counts[t]), "share": round(int(total_counts[t]) / n_tokens, 6),
                        "text": codec.token_text(int(t)) if codec else None})
    sample = None
    if first is not None:
        ids = first.chunks[0][int(first.offsets[0][0]) : int(first.offsets[0][1])]
        sample = {
            "path": str(first.path.relative_to(shards_dir)),
            "document": 0,
            "tokens": int(len(ids)),
            "text": codec.decode(ids)[: config.sample_chars] if codec else None,
            "ids": [int(x) for x in ids[:64]],
        }
    report = {
        "folder": str(shards_dir),
        "vocab_size": vocab_size,
        "eot_id": eot_id,
        "tokenizer_hash": tok_hash,
        "tokenizer": str(tok_path) if tok_path else None,
        "tokenizer_note": tok_note,
        "shards": shards,
        "total": total,
        "top_tokens": top,
        "sample": sample,
    }
    return report, all_lengths


def format_report(report: dict) -> str:
    """The human-readable report: a table per shard and in total, top tokens, a sample document."""

    def row(name: str, s: dict) -> list:
        t = s["tokens_per_document"]
        return [name, s["documents"], s["tokens"], s["bytes"], f"{t['mean']:.1f}", f"{t['median']:.0f}",
                f"{t['p99']:.0f}", f"{100 * s['eot_share']:.2f}%"]

    rows = [row(f"{s['path']}", s) for s in report["shards"]]
    rows.append(row("total", report["total"]))
    lines = [
        f"token shards in {report['folder']}: vocab {report['vocab_size']}, end-of-text id {report['eot_id']}, "
        f"tokenizer {str(report['tokenizer_hash'])[:12]} ({report['tokenizer_note']})",
        "",
        format_table(rows, ["shard", "documents", "tokens", "bytes", "tok/doc mean", "median", "p99", "eot share"]),
        "",
    ]
    for split, s in report["total"]["by_split"].items():
        lines.append(f"{split or '(no split)'}: {s['documents']:,} documents, {s['tokens']:,} tokens")
    if report["top_tokens"]:
        lines += ["", "most frequent tokens:"]
        trows = [[t["id"], repr(t["text"]) if t["text"] is not None else "", t["count"], f"{100 * t['share']:.2f}%"]
                 for t in report["top_tokens"]]
        lines.append(format_table(trows, ["id", "text", "count", "share"]))
    if report["sample"]:
        s = report["sample"]
        lines += ["", f"sample document ({s['path']}, document {s['document']}, {s['tokens']} tokens):"]
        lines.append(s["text"] if s["text"] is not None else " ".join(map(str, s["ids"])) + " ...")
    return "\n".join(lines)


def plot_length_histogram(lengths_by_split: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """A PNG histogram of document lengths in tokens (log-spaced bins, one series per split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    every = np.concatenate(list(lengths_by_split.values())) if lengths_by_split else np.zeros(0)
    lo = max(int(every.min()) if len(every) else 1, 1)
    hi = max(int(every.max()) if len(every) else 2, lo + 1)
    bins = np.unique(np.geomspace(lo, hi + 1, 60).astype(int))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for split, lengths in sorted(lengths_by_split.items()):
        # Shares, not counts: the small validation split stays visible next to the training split.
        weights = np.full(len(lengths), 100.0 / max(len(lengths), 1))
        ax.hist(lengths, bins=bins, weights=weights, alpha=0.55, label=f"{split or 'all'} ({len(lengths):,} docs)")
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens, incl. end-of-text)")
    ax.set_ylabel("% of the split's documents")
    ax.set_title(title or "document lengths")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def shard_stats(shards_dir: str | Path, tokenizer: str | Path | None = None, histogram: str | Path | None = None,
                config: StatsConfig = StatsConfig()) -> dict:
    """Compute the report, write the histogram PNG if asked, and return the report."""
    report, lengths = compute_stats(shards_dir, tokenizer, config)
    if histogram is not None:
        report["histogram"] = str(plot_length_histogram(lengths, histogram, f"document lengths: {shards_dir}"))
    return report


def format_json(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)


__all__: Sequence[str] = ["StatsConfig", "compute_stats", "format_report", "format_json", "plot_length_histogram",
                          "shard_stats", "find_shard_files", "find_tokenizer"]
