"""The tokenizer (bytes per token on held-out text, vocabulary use) and the token shards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from report import svg
from report.data import manifest
from report.page import Section, esc, table
from formats.token_shards import TokenShardError, open_shard

log = logging.getLogger(__name__)

#: Tokens read (from the validation split first) to measure how much of the vocabulary is used.
MAX_COUNT_TOKENS = 5_000_000


def section(data_dir: Path) -> Section | None:
    tok = manifest(data_dir, "tokenizer")
    shards = manifest(data_dir, "shards")
    if tok is None and shards is None:
        return None
    parts = []
    if tok is not None and "heldout" in tok:
        h, t = tok["heldout"], tok.get("training", {})
        parts.append(table(["tokenizer", ""], [
            ("vocabulary size", tok.get("vocab_size")), ("special tokens", len(tok.get("special_tokens", []))),
            ("trained on", f"{t.get('documents', 0):,} documents, {t.get('bytes', 0) / 1e6:,.1f} MB"),
            ("bytes per token (held out)", h.get("bytes_per_token")),
            ("tokens per word (held out)", h.get("tokens_per_word"))]))
    if shards is not None and "split_totals" in shards:
        rows = [(split, s["files"], s["documents"], s["tokens"], f"{s['bytes'] / 2**20:,.1f} MiB")
                for split, s in shards["split_totals"].items()]
        parts.append(table(["split", "files", "documents", "tokens", "size"], rows))
        parts.append(f"<p class=\"muted\">dtype {esc(shards.get('dtype'))}, end-of-text id {esc(shards.get('eot_id'))}, "
                     f"tokenizer sha256 {esc(str(shards.get('tokenizer_hash', ''))[:16])}…</p>")
        parts.append(_vocab_use(data_dir / "shards", shards))
    return Section("tokens", "Tokenizer and shards", "".join(parts))


def _vocab_use(shards_dir: Path, m: dict) -> str:
    vocab = int(m.get("vocab_size", 0))
    files = [f["path"] for split in ("val", "train") for f in m.get("splits", {}).get(split, [])]
    counts, seen = np.zeros(vocab, np.int64), 0
    for rel in files:
        try:
            shard = open_shard(shards_dir / rel)
        except TokenShardError as exc:
            log.warning("report: %s", exc)
            continue
        for chunk in shard.chunks:
            part = chunk[: MAX_COUNT_TOKENS - seen]
            counts += np.bincount(part, minlength=vocab)[:vocab]
            seen += len(part)
        if seen >= MAX_COUNT_TOKENS:
            break
    if not seen:
        return ""
    used = int((counts > 0).sum())
    ranked = np.sort(counts)[::-1]
    cum = np.cumsum(ranked) / seen
    rows = [("tokens counted", seen), ("vocabulary ids used", f"{used:,} of {vocab:,} ({100 * used / vocab:.1f}%)")]
    for share in (0.5, 0.9, 0.99):
        rows.append((f"ids covering {share:.0%} of tokens", int(np.searchsorted(cum, share) + 1)))
    curve = [(i + 1, float(cum[i])) for i in np.unique(np.geomspace(1, vocab, 60).astype(int) - 1)]
    return (table(["vocabulary use", ""], rows)
            + svg.lines({"share of tokens": curve}, "share of tokens covered by the N most frequent ids", "ids"))
