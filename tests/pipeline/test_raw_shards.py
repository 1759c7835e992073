"""`crawlgpt shards --from raw`: every readable document of the download stage's files becomes tokens, with
no filter and no dedup (the data ablation's baseline), through the same stage runner as the corpus shards."""

from __future__ import annotations

import numpy as np

from lm_fixtures import train_tiny_tokenizer
from pipeline.download import run_download
from pipeline.tokenize_stage import ShardsConfig, make_shards
from pipeline.tokenizer_train import TextCodec
from train.data import open_split


def test_raw_files_are_tokenized_whole_and_unreadable_records_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = ["The cat sat on the mat.", "The cat sat on the mat.", "Ein Fluss fließt durch das Dorf."]
    lines = [f'{{"id": "d{i}", "text": "{t}"}}' for i, t in enumerate(docs)] + ['{"id": "broken", "text": ']
    (src / "part-0.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    run_download(str(src), None, data)
    tok = train_tiny_tokenizer(tmp_path / "tok" / "tokenizer.json")
    m = make_shards(data / "raw", tok, data / "shards-raw", ShardsConfig(val_fraction=0.0, source="raw"))
    assert m["totals"]["docs_in"] == 4
    assert m["totals"]["kept"] == 3  # the duplicate and the German document stay: nothing is filtered
    assert sum(m["totals"]["unreadable"].values()) == 1
    assert m["config"]["source"] == "raw"
    codec = TextCodec(tok)
    train = open_split(data / "shards-raw", "train")
    want = [t for d in docs for t in codec.encode(d) + [codec.eot_id]]
    assert np.array_equal(train.window(0, train.num_tokens), np.asarray(want))
    again = make_shards(data / "raw", tok, data / "shards-raw", ShardsConfig(val_fraction=0.0, source="raw"))
    assert again["totals"] == m["totals"]
