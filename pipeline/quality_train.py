"""Train the fastText quality classifier: reference text (positives) against the raw crawl (negatives).

This is GPT-3's quality classifier (Brown et al. 2020, appendix A), with fastText in place of Spark's
hashed features + logistic regression: positives are documents from REFERENCE, a curated set of the
kind of text we want (GPT-3 used WebText, Wikipedia and books); negatives are documents sampled at
random from the raw crawl being curated. The raw crawl also holds good pages, so some negatives are
really positives: GPT-3 accepted that noise, and so do we. Its cost is that a good crawl page scores
about as well as a *held-out reference* page, not near 1.0, and that the held-out precision and ROC AUC
printed here understate the classifier (some "negatives" it scores high are good pages).

Because of that the filter's default threshold is not 0.5 but the score that keeps `target_recall`
(99.5 %) of the held-out reference documents: "drop pages less like the reference than all but the
least typical reference pages". It is saved in the manifest as `threshold` and used by `crawlgpt
filter` unless --quality-threshold is given. It is lenient on purpose: the rules remove the obvious
junk, and the classifier inherits the reference's bias (a reference of mostly Wikipedia scores
dialogue-heavy fiction lower), so a strict threshold would cost good pages of other styles. Lower
--target-recall (or raise --quality-threshold) for a stricter classifier.

Outputs, in DATA/quality/: `model.bin` (fastText) and `manifest.json`, written last and atomically,
holding the config, the reference files' sha256, the raw inputs' manifest hash, the example counts, the
held-out figures and the model's sha256. It is a stage of one task under `pipeline.stage.run_stage`:
a rerun with the same config, reference and raw inputs skips training; other inputs retrain; another
config is refused without `force`.

Training is deterministic for a given seed: sampling uses `random.Random(seed)`, fastText runs on one
thread (its multi-threaded training is not reproducible) and starts from vectors drawn with the seed
(see `train_fasttext` for why we supply them). Words only, no word n-grams: n-gram rows live in hashed
buckets that this fastText build would leave uninitialised, and on a two-class problem they add size
more than accuracy. One thread trains the default model on 6,500 documents in about ten seconds.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from pipeline.documents import Document
from pipeline.download import load_raw_files, raw_dir
from pipeline.errors import ConfigError, InputError
from pipeline.filters.classifier import HQ_LABEL, LQ_LABEL, normalize_text
from formats.manifest import MANIFEST_NAME, atomic_path, manifest_hash, output_record, read_json, sha256_file
from pipeline.readers import ReaderConfig, Unreadable, read_file
from pipeline.stage import Executor, Progress, ShardStats, ShardTask, run_stage

log = logging.getLogger(__name__)

QUALITY_DIR = "quality"
MODEL_NAME = "model.bin"
#: How the texts are normalised before fastText sees them (recorded in the manifest for the filter).
NORMALIZATION = "lower-punct"


@dataclass(frozen=True)
class QualityTrainConfig:
    """How the quality classifier is trained."""

    #: Files of good reference text (JSONL/.gz/.zst, Parquet, .txt, WET), the positives.
    reference: tuple[str, ...]
    #: Negatives sampled from the raw crawl per positive.
    negatives_per_positive: float = 1.0
    #: Share of positives and of negatives held out to measure the classifier.
    holdout: float = 0.1
    #: Seed of the sampling, the split and fastText.
    seed: int = 0
    #: Share of held-out reference documents the recommended threshold keeps (lenient on purpose: the
    #: rules do the bulk, and the classifier is biased toward the reference's own style).
    target_recall: float = 0.995
    #: fastText epochs.
    epoch: int = 5
    #: fastText learning rate.
    lr: float = 0.1
    #: fastText vector size (32 keeps the model ~10 MB; larger barely helps a two-class problem).
    dim: int = 32
    #: Words seen fewer times are ignored (5 keeps the model small; rarer words are mostly names).
    min_count: int = 5
    #: Characters of each document used (the start of a long document says enough).
    max_chars: int = 100_000
    #: Field or column holding the text in JSONL/Parquet reference files.
    text_field: str = "text"

    def __post_init__(self) -> None:
        if not self.reference:
            raise ConfigError("--reference", "give at least one file of reference text")
        if self.negatives_per_positive <= 0:
            raise ConfigError("--negatives-per-positive", f"must be > 0, got {self.negatives_per_positive}")
        if not 0 < self.holdout < 1:
            raise ConfigError("--holdout", f"must be between 0 and 1, got {self.holdout}")
        if not 0 < self.target_recall <= 1:
            raise ConfigError("--target-recall", f"must be in (0, 1], got {self.target_recall}")


def quality_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / QUALITY_DIR


STAGE = "quality"


def train_quality_model(
    data_dir: str | Path,
    config: QualityTrainConfig,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    executor: Executor | None = None,
) -> dict:
    """Train (or reuse) DATA/quality/model.bin and return the manifest.

    A stage of one task under `pipeline.stage.run_stage`: its inputs are the reference files and the
    raw files, its upstream the raw manifest, so a changed reference or crawl retrains, a changed
    config is refused without `force`, and a rerun with nothing changed skips training.
    """
    out = quality_dir(data_dir)
    raw_files = load_raw_files(data_dir)
    if not raw_files:
        raise InputError(f"{raw_dir(data_dir)}/manifest.json lists no files; run `make download` first")
    for path in config.reference:
        _check_reference(path)
    task = ShardTask(MODEL_NAME.split(".")[0], tuple(config.reference) + tuple(str(p) for p in raw_files))

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        facts = manifest["shards"][0]["extra"]
        manifest.update({k: facts[k] for k in _MANIFEST_FACTS})
        manifest["raw_manifest_sha256"] = manifest["upstream"]["raw"]
        return manifest

    return run_stage(STAGE, out, config, [task], train_model_shard, force=force,
                     upstream={"raw": manifest_hash(raw_dir(data_dir))}, on_progress=on_progress,
                     finalize=finalize, executor=executor)


#: Facts of the trained model that the manifest carries at its top level (the filter reads them).
_MANIFEST_FACTS = ("reference", "raw_docs_seen", "label", "negative_label", "normalization", "max_chars",
                   "threshold", "counts", "metrics", "model")


def train_model_shard(task: ShardTask, stage_dir: Path, config: QualityTrainConfig) -> ShardStats:
    """Stage function: reference files + raw files (`task.inputs`) -> stage_dir/model.bin.

    Accounting: documents in = reference documents read + negatives sampled from the crawl; kept =
    those trained or measured on; dropped `empty` = reference documents with no text.
    """
    raw_files = [Path(p) for p in task.inputs[len(config.reference):]]
    start = time.monotonic()
    rng = random.Random(config.seed)
    reference = [_reference_entry(p) for p in config.reference]

    log.info("quality: reading reference documents")
    positives, ref_unreadable, ref_empty = _read_texts(config.reference, config)
    for entry, n_docs, n_bad in zip(reference, *_per_file_counts(positives, ref_unreadable, config.reference)):
        entry["docs"], entry["unreadable"] = n_docs, n_bad
    pos_texts = [t for _, t in positives]
    if len(pos_texts) < 20:
        raise InputError(
            f"--reference: {len(pos_texts)} readable documents in {', '.join(config.reference)}; at least 20 are "
            "needed to train and measure a classifier (thousands for a useful one)"
        )
    n_neg = max(1, round(config.negatives_per_positive * len(pos_texts)))
    log.info("quality: sampling %s negatives from %d raw files", f"{n_neg:,}", len(raw_files))
    neg_texts, crawl_docs = _reservoir_sample(_raw_texts(raw_files), n_neg, rng)
    if len(neg_texts) < 10:
        raise InputError(f"the raw crawl holds {crawl_docs} readable documents; too few negatives to train on")

    rng.shuffle(pos_texts)
    rng.shuffle(neg_texts)
    pos_train, pos_test = _split(pos_texts, config.holdout)
    neg_train, neg_test = _split(neg_texts, config.holdout)

    tmp_dir = Path(tempfile.mkdtemp(prefix=".train-", dir=stage_dir))
    try:
        examples = [(HQ_LABEL, normalize_text(t, NORMALIZATION, config.max_chars)) for t in pos_train]
        examples += [(LQ_LABEL, normalize_text(t, NORMALIZATION, config.max_chars)) for t in neg_train]
        rng.shuffle(examples)
        log.info("quality: training fastText on %s documents", f"{len(examples):,}")
        model = train_fasttext(examples, tmp_dir, config)
        pos_scores = _scores(model, pos_test, config.max_chars)
        neg_scores = _scores(model, neg_test, config.max_chars)
        metrics = evaluate(pos_scores, neg_scores, config.target_recall)
        with atomic_path(stage_dir / MODEL_NAME) as tmp_model:
            model.save_model(str(tmp_model))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    record = output_record(stage_dir / MODEL_NAME, len(pos_train) + len(neg_train), stage_dir)
    stats = ShardStats(docs_in=len(pos_texts) + ref_empty + len(ref_unreadable) + len(neg_texts),
                       kept=len(pos_texts) + len(neg_texts), outputs=[record])
    if ref_empty:
        stats.dropped["empty"] = ref_empty
    if ref_unreadable:
        stats.unreadable["reference"] = len(ref_unreadable)
    stats.extra = {
        "reference": reference,
        "raw_docs_seen": crawl_docs,
        "label": HQ_LABEL,
        "negative_label": LQ_LABEL,
        "normalization": NORMALIZATION,
        "max_chars": config.max_chars,
        "threshold": metrics["threshold"],
        "counts": {
            "train_positive": len(pos_train),
            "train_negative": len(neg_train),
            "holdout_positive": len(pos_test),
            "holdout_negative": len(neg_test),
        },
        "metrics": metrics,
        "model": {"path": MODEL_NAME, "bytes": record["bytes"], "sha256": record["sha256"]},
        "train_elapsed_s": round(time.monotonic() - start, 3),
    }
    log.info(
        "quality: trained on %d+%d documents; held-out ROC AUC %.3f, threshold %.3f (recall %.3f, precision %.3f)",
        len(pos_train), len(neg_train), metrics["roc_auc"], metrics["threshold"], metrics["recall"], metrics["precision"],
    )
    return stats


def model_manifest(model_path: str | Path) -> dict | None:
    """The quality manifest that describes `model_path` (beside it, same sha256), or None (plug-in model)."""
    model_path = Path(model_path)
    manifest_path = model_path.parent / MANIFEST_NAME
    if not manifest_path.exists():
        return None
    try:
        manifest = read_json(manifest_path)
    except ValueError:
        return None
    if manifest.get("stage") != "quality" or manifest.get("model", {}).get("path") != model_path.name:
        return None
    if manifest["model"].get("sha256") != sha256_file(model_path):
        return None
    return manifest


# --- metrics -------------------------------------------------------------------------------------


def roc_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties 1/2)."""
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # average rank of each distinct score (1-based), so tied scores share their ranks
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def evaluate(pos_scores: np.ndarray, neg_scores: np.ndarray, target_recall: float) -> dict:
    """Held-out figures: ROC AUC, the threshold keeping `target_recall` of positives, precision and
    recall there, and at 0.5."""
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))
    neg = np.asarray(neg_scores, dtype=np.float64)
    k = int(np.floor((1.0 - target_recall) * len(pos)))
    threshold = float(pos[min(k, len(pos) - 1)])

    def at(t: float) -> tuple[float, float]:
        tp = int((pos >= t).sum())
        fp = int((neg >= t).sum())
        return (tp / (tp + fp) if tp + fp else 0.0), tp / len(pos)

    precision, recall = at(threshold)
    precision_05, recall_05 = at(0.5)
    return {
        "roc_auc": round(roc_auc(pos, neg), 4),
        "threshold": round(threshold, 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "precision_at_0.5": round(precision_05, 4),
        "recall_at_0.5": round(recall_05, 4),
        "target_recall": target_recall,
    }


# --- helpers -------------------------------------------------------------------------------------


#: fastText's end-of-line token: a word of the dictionary like any other.
_EOS = "</s>"


def train_fasttext(examples: list[tuple[str, str]], work_dir: Path, config: QualityTrainConfig):
    """Train a supervised fastText model on (label, normalised one-line text) pairs, reproducibly.

    The fastText build we use (fasttext-numpy2-wheel 0.9.2) allocates the input matrix without zeroing
    it, and with one training thread initialises only its first tenth (an upstream quirk: the
    initialisation is split into ten blocks, one per thread). The rest holds whatever the allocator
    returns: zeros in a fresh process, leftovers in a busy one, which gives "Encountered NaN" or a
    saturated model at random. We therefore hand fastText a start vector for every word, drawn from
    fastText's own U(-1/dim, 1/dim) with our seed, as "pretrained vectors"; with word n-grams off
    there are no other rows, so every weight starts defined. Words rarer than `min_count` are removed
    from the text beforehand (fastText would ignore them too), so the dictionary is exactly the words
    we give vectors for.
    """
    import fasttext

    counts: Counter = Counter()
    for _, text in examples:
        counts.update(text.split(" "))
    counts.pop("", None)
    keep = {w for w, c in counts.items() if c >= config.min_count}
    train_file = work_dir / "train.txt"
    with open(train_file, "w", encoding="utf-8") as f:
        for label, text in examples:
            words = [w for w in text.split(" ") if w in keep]
            f.write(f"{label} {' '.join(words)}\n")
    vocab = sorted(keep) + [_EOS]
    rng = np.random.default_rng(config.seed)
    vectors = rng.uniform(-1.0 / config.dim, 1.0 / config.dim, size=(len(vocab), config.dim)).astype(np.float32)
    vectors_file = work_dir / "init.vec"
    with open(vectors_file, "w", encoding="utf-8") as f:
        f.write(f"{len(vocab)} {config.dim}\n")
        for word, row in zip(vocab, vectors):
            f.write(word + " " + " ".join(map(repr, row.tolist())) + "\n")
    return fasttext.train_supervised(
        input=str(train_file),
        epoch=config.epoch,
        lr=config.lr,
        dim=config.dim,
        wordNgrams=1,
        minCount=1,
        loss="softmax",
        thread=1,
        seed=config.seed,
        pretrainedVectors=str(vectors_file),
        verbose=0,
    )


def _scores(model, texts: list[str], max_chars: int) -> np.ndarray:
    out = np.empty(len(texts))
    for i, t in enumerate(texts):
        labels, probs = model.predict(normalize_text(t, NORMALIZATION, max_chars), k=2)
        out[i] = next((float(p) for lab, p in zip(labels, probs) if lab == HQ_LABEL), 0.0)
    return np.minimum(out, 1.0)


def _split(items: list, holdout: float) -> tuple[list, list]:
    k = max(1, round(len(items) * holdout))
    return items[k:], items[:k]


def _check_reference(path: str) -> None:
    if not Path(path).is_file():
        raise InputError(f"--reference: {path} does not exist. Give files of good text (see docs/filter.md, "
                         "section 'The quality classifier').")


def _reference_entry(path: str) -> dict:
    p = Path(path)
    _check_reference(path)
    return {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def _read_texts(paths: Iterable[str], config: QualityTrainConfig) -> tuple[list[tuple[str, str]], list[str], int]:
    """(path, text) of every readable document in `paths`, the paths of unreadable items, and the
    number of documents with no text."""
    reader = ReaderConfig(text_field=config.text_field)
    texts: list[tuple[str, str]] = []
    bad: list[str] = []
    empty = 0
    for path in paths:
        for item in read_file(path, reader):
            if isinstance(item, Unreadable):
                bad.append(path)
            elif item.text.strip():
                texts.append((path, item.text))
            else:
                empty += 1
    if bad:
        log.warning("quality: %d unreadable items in the reference files (skipped)", len(bad))
    return texts, bad, empty


def _per_file_counts(positives, unreadable, paths) -> tuple[list[int], list[int]]:
    docs = [sum(1 for p, _ in positives if p == path) for path in paths]
    bad = [sum(1 for p in unreadable if p == path) for path in paths]
    return docs, bad


def _raw_texts(raw_files: list[Path]) -> Iterator[str]:
    for path in raw_files:
        for item in read_file(path):
            if isinstance(item, Document) and item.text.strip():
                yield item.text


def _reservoir_sample(items: Iterable[str], k: int, rng: random.Random) -> tuple[list[str], int]:
    """A uniform sample of `k` items from a stream (Vitter's algorithm R), and the stream's length."""
    sample: list[str] = []
    n = 0
    for n, item in enumerate(items, start=1):
        if len(sample) < k:
            sample.append(item)
        else:
            j = rng.randrange(n)
            if j < k:
                sample[j] = item
    return sample, n
