"""The DATA folder: every stage's folder, named once.

```
DATA/
  raw/             download: the crawl's files, as fetched or linked
  quality/         quality-train: the fastText quality classifier (model.bin) and its figures
  models/          models given by URL (lid.176, a quality model), cached
  filtered/        filter: documents kept by language, rules and quality (rejected/ beside them)
  dedup/           dedup's work folders (signatures, buckets, clusters)
  corpus/          dedup: the curated documents
  decontaminated/  decontaminate (optional): the corpus without benchmark 13-grams
  redacted/        pii (optional): the corpus with e-mail and public IP addresses replaced
  tokenizer/       tokenizer: tokenizer.json
  shards/          shards: token shards of the corpus (shards-raw/, shards-filtered/ for the ablation)
  runs/RUN/        every training run: metrics.jsonl, loss.png, checkpoints/
  export/RUN/      export: the run as a Hugging Face folder
  ablation/        the data ablation's runs and table
```
Stages take DATA and find their folders here; nothing else spells these names.
"""

from __future__ import annotations

from pathlib import Path

RAW = "raw"
QUALITY = "quality"
MODELS = "models"
FILTERED = "filtered"
DEDUP = "dedup"
CORPUS = "corpus"
DECONTAMINATED = "decontaminated"
REDACTED = "redacted"
TOKENIZER = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
SHARDS = "shards"
RUNS = "runs"
EXPORT = "export"
ABLATION = "ablation"


def tokenizer_file(data: str | Path) -> Path:
    """DATA/tokenizer/tokenizer.json."""
    return Path(data) / TOKENIZER / TOKENIZER_FILE


def run_dir(data: str | Path, run: str) -> Path:
    """DATA/runs/RUN (the run name is checked by the CLI: one plain folder name)."""
    return Path(data) / RUNS / run


def shards_dir(data: str | Path, source: str = CORPUS) -> Path:
    """DATA/shards for the curated corpus (or its decontaminated or redacted version), DATA/shards-SOURCE otherwise."""
    return Path(data) / (SHARDS if source in (CORPUS, DECONTAMINATED, REDACTED) else f"{SHARDS}-{source}")
