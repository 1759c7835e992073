"""Keep/drop decisions against people's judgment: our filter chain beside datatrove's FineWeb chain.

On ../shared/data/web/human-labels-dev.jsonl (246 real Common Crawl pages, `label` 1 good / 0 bad by
majority of annotators, `unanimous` where all agreed) it reports good kept, bad dropped, balanced
accuracy and precision, overall and on the unanimous pages, for:

- datatrove 0.10.1's FineWeb chain (run with .venv-bench/bin/python): LanguageFilter(en, 0.65) with
  the same lid.176 model, GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter(
  filter_no_terminal_punct=False), FineWebQualityFilter, each page through the filters in that order;
- ours before issue 18: all four rule families and the quality classifier at its manifest threshold;
- ours now (the CLI default): language ID, Gopher quality and repetition, the quality classifier at
  its threshold, then the bundled page model. The page model was trained on these very pages, so its
  figures here are cross-validated: the bundled model's recipe (`page-model-train` with the settings
  stored in the model file) is refitted 10 x 5-fold, each page decided by a model that never saw it;
  mean ± sd over the repeats.

The quality classifier is trained once, as `make corpus` does: `quality-train` on the dev crawl
(negatives) and ../shared/data/reference/reference-dev.jsonl.zst (positives).

Then the same three chains on ../shared/data/crawl-dev (labels.jsonl): good English kept, non-English
removed, junk removed (as bench_filters.py; `--skip-crawl` leaves it out, datatrove takes minutes there).

Run: .venv/bin/python bench/bench_filters_labelled.py [--data DIR] [--skip-datatrove] [--skip-crawl]
Writes bench/results/filters_labelled.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_filters import accuracy, kept_urls_ours, load_labels, run_datatrove  # noqa: E402
from pipeline.download import run_download  # noqa: E402
from pipeline.filter_eval import LabelledPage, evaluate_labelled, read_labelled_pages  # noqa: E402
from pipeline.filter_stage import RULES, WEB_RULES, FilterConfig, build_chain, run_filter  # noqa: E402
from pipeline.filters.language import default_lid_model_path  # noqa: E402
from pipeline.filters.page_model import BUNDLED_PAGE_MODEL, load_page_model  # noqa: E402
from pipeline.page_model_train import (  # noqa: E402
    PageModelTrainConfig,
    balanced_accuracy,
    cross_validate,
    page_signals,
    read_extra_texts,
)
from pipeline.quality_train import QualityTrainConfig, train_quality_model  # noqa: E402
from pipeline.stage import format_table  # noqa: E402

DATATROVE_PAGES = r"""
import json, os, shutil, sys
from loguru import logger
logger.remove()
logger.add(sys.stderr, level="WARNING")
from datatrove.io import strip_protocol
from huggingface_hub import cached_assets_path
from datatrove.utils.lid import FT176LID

labels, lid = sys.argv[1], sys.argv[2]
cache = cached_assets_path(library_name="datatrove", namespace="lid", subfolder=FT176LID.MODEL_SUBFOLDER)
target = os.path.join(cache, strip_protocol(FT176LID.MODEL_URL).replace("/", "_"))
shutil.copy(lid, target)
open(target + ".completed", "w").close()

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter, LanguageFilter,
)
from datatrove.pipeline.filters.base_filter import get_filter_result

chain = [
    LanguageFilter(languages=["en"], language_threshold=0.65),
    GopherRepetitionFilter(),
    GopherQualityFilter(),
    C4QualityFilter(filter_no_terminal_punct=False),
    FineWebQualityFilter(),
]
out = []
for i, line in enumerate(open(labels, encoding="utf-8")):
    if not line.strip():
        continue
    doc = Document(text=json.loads(line)["text"], id=str(i), metadata={})
    reason = None
    for f in chain:
        ok, why = get_filter_result(f.filter(doc))
        if not ok:
            reason = f"{f.name}:{why}"
            break
    out.append(reason)
print(json.dumps(out))
"""


def figures(labels: np.ndarray, keep: np.ndarray) -> dict:
    ba, good_kept, bad_dropped = balanced_accuracy(labels, keep)
    kept = int(keep.sum())
    return {"balanced_accuracy": ba, "good_kept": good_kept, "bad_dropped": bad_dropped,
            "precision": float(labels[keep].mean()) if kept else float("nan"), "pages": int(len(labels))}


def datatrove_pages(labels_file: Path, work: Path) -> list[str | None] | None:
    py = REPO / ".venv-bench" / "bin" / "python"
    if not py.exists():
        print(f"datatrove: {py} not found (make .venv-bench/.installed), skipped", file=sys.stderr)
        return None
    env = dict(os.environ, HF_ASSETS_CACHE=str(work / "hf-assets"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(py), "-c", DATATROVE_PAGES, str(labels_file), str(default_lid_model_path())],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("datatrove run failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours_now_cv(config: FilterConfig, pages: list[LabelledPage], unanimous: np.ndarray, data_dir: Path) -> dict:
    """Cross-validated figures of the default chain: the bundled model's recipe refitted per fold."""
    recipe = load_page_model(BUNDLED_PAGE_MODEL).info
    train = recipe["train"]
    extra_files = [str(data_dir / "reference" / name) for name in recipe["extra_positives"]["files"]]
    cv_config = PageModelTrainConfig(l2=train["l2"], threshold=train["threshold"], folds=train["folds"],
                                     repeats=train["repeats"], seed=train["seed"], extra_positives=tuple(extra_files),
                                     extra_weight=recipe["extra_positives"]["weight"])
    no_quality = dataclasses.replace(config, quality_model=None, page_model=None)
    texts = [p.text for p in pages]
    signals = page_signals(no_quality, texts)
    # the quality classifier decides at its own threshold before the page model (as in the chain)
    quality = next(f for f in build_chain(dataclasses.replace(config, page_model=None)) if f.name == "quality_classifier")
    signals.base_keep &= np.array([quality.score(t) >= quality.threshold for t in texts])
    extra = page_signals(no_quality, read_extra_texts(cv_config.extra_positives, cv_config.max_extra, cv_config.seed)).matrix
    labels = np.array([p.label for p in pages])
    return cross_validate(signals, labels, cv_config, {"unanimous": unanimous}, extra)


def crawl_dev(crawl: Path, work: Path, configs: dict[str, FilterConfig], workers: int, skip_datatrove: bool) -> dict:
    labels = load_labels(crawl)
    out = {}
    for name, config in configs.items():
        data = work / f"crawl-{len(out)}"
        run_download(str(crawl / "*.warc.wet.gz"), 0, data)
        run_filter(data, config, workers=workers)
        out[name] = accuracy(labels, kept_urls_ours(data))
    if not skip_datatrove:
        peer = run_datatrove(crawl, work)
        if peer is not None:
            out["datatrove FineWeb chain"] = accuracy(labels, peer["kept"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--skip-crawl", action="store_true")
    args = ap.parse_args()
    labels_file = args.data / "web" / "human-labels-dev.jsonl"
    crawl = args.data / "crawl-dev"
    pages = read_labelled_pages(labels_file)
    labels = np.array([p.label for p in pages])
    unanimous = np.array([bool(p.fields.get("unanimous")) for p in pages])
    work = Path(tempfile.mkdtemp(prefix="bench-filters-labelled-", dir=REPO / "bench" / "results"))
    results: dict = {"pages": len(pages), "unanimous": int(unanimous.sum())}
    try:
        qdata = work / "data-quality"
        run_download(str(crawl / "*.warc.wet.gz"), 0, qdata)
        train_quality_model(qdata, QualityTrainConfig(reference=(str(args.data / "reference" / "reference-dev.jsonl.zst"),)))
        quality_model = str(qdata / "quality" / "model.bin")
        lid = str(default_lid_model_path())
        before = FilterConfig(lid_model=lid, rules=RULES, quality_model=quality_model)
        now = FilterConfig(lid_model=lid, rules=WEB_RULES, quality_model=quality_model, page_model=str(BUNDLED_PAGE_MODEL))

        rows = []
        report = evaluate_labelled(before, pages)
        keep = np.array([o.reason is None for o in report["outcomes"]])
        results["ours before"] = {"all": figures(labels, keep), "unanimous": figures(labels[unanimous], keep[unanimous]),
                                  "quality_auc": report["all"]["roc_auc"]["quality_score"]}
        cv = ours_now_cv(now, pages, unanimous, args.data)
        results["ours now (CV)"] = cv
        peer = None if args.skip_datatrove else datatrove_pages(labels_file, work)
        if peer is not None:
            keep_dt = np.array([r is None for r in peer])
            results["datatrove"] = {"all": figures(labels, keep_dt), "unanimous": figures(labels[unanimous], keep_dt[unanimous])}
        for name in ("datatrove", "ours before"):
            if name in results:
                r = results[name]
                rows.append((name, f"{r['all']['balanced_accuracy']:.3f}", f"{r['all']['good_kept']:.1%}",
                             f"{r['all']['bad_dropped']:.1%}", f"{r['all']['precision']:.3f}",
                             f"{r['unanimous']['balanced_accuracy']:.3f}"))
        c = cv["all"]
        rows.append(("ours now (10x5-fold CV)", f"{c['balanced_accuracy'][0]:.3f} ± {c['balanced_accuracy'][1]:.3f}",
                     f"{c['good_kept'][0]:.1%} ± {c['good_kept'][1]:.1%}", f"{c['bad_dropped'][0]:.1%} ± {c['bad_dropped'][1]:.1%}",
                     f"{c['precision'][0]:.3f} ± {c['precision'][1]:.3f}",
                     f"{cv['unanimous']['balanced_accuracy'][0]:.3f} ± {cv['unanimous']['balanced_accuracy'][1]:.3f}"))
        print(f"\nlabelled web pages ({len(pages)}, {int(unanimous.sum())} unanimous); ROC AUC: quality classifier "
              f"{results['ours before']['quality_auc']:.3f}, page model (CV) {c['roc_auc'][0]:.3f} ± {c['roc_auc'][1]:.3f}")
        print(format_table(rows, ["", "balanced acc.", "good kept", "bad dropped", "precision",
                                  "balanced acc. (unanimous)"]))

        if not args.skip_crawl:
            crawl_res = crawl_dev(crawl, work, {"ours before": before, "ours now": now}, args.workers, args.skip_datatrove)
            results["crawl_dev"] = crawl_res
            print("\ncrawl-dev")
            print(format_table([(k, f"{v['good_english_kept']:.2%}", f"{v['non_english_removed']:.2%}",
                                 f"{v['junk_removed']:.2%}") for k, v in crawl_res.items()],
                               ["", "good en kept", "non-en removed", "junk removed"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = REPO / "bench" / "results" / "filters_labelled.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
