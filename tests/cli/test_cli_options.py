"""Number and text options are checked by click before any work, naming the option: NaN and infinity
fail every float option (they pass plain range comparisons), counts below their minimum are refused,
and text with bytes that are not UTF-8 is refused where it is given."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main

REFUSED = [
    # item 9: non-finite floats
    (["ppo", "--prompts", "README.md", "--temperature", "nan"], "--temperature"),
    (["ppo", "--prompts", "README.md", "--kl-coef", "nan"], "--kl-coef"),
    (["ppo", "--prompts", "README.md", "--vf-coef", "nan"], "--vf-coef"),
    (["ppo", "--prompts", "README.md", "--no-eot-penalty", "nan"], "--no-eot-penalty"),
    (["ppo", "--prompts", "README.md", "--lr", "inf"], "--lr"),
    (["chat", "--temperature", "nan"], "--temperature"),
    (["align-compare", "--prompts", "README.md", "--temperature", "nan"], "--temperature"),
    (["sft", "--epochs", "nan"], "--epochs"),
    (["sft", "--weight-decay", "nan"], "--weight-decay"),
    (["dpo", "--pairs", "README.md", "--beta", "nan"], "--beta"),
    (["sample", "--temperature", "nan"], "--temperature"),
    (["sample", "--top-p", "nan"], "--top-p"),
    (["pretrain", "--lr", "nan"], "--lr"),
    (["filter", "--page-threshold", "nan"], "--page-threshold"),
    (["page-model-train", "--labels", "README.md", "--out", "m.json", "--l2", "nan"], "--l2"),
    (["page-model-train", "--labels", "README.md", "--out", "m.json", "--threshold", "1.5"], "--threshold"),
    (["page-model-train", "--labels", "README.md", "--out", "m.json", "--extra-weight", "inf"], "--extra-weight"),
    (["classify", "--checkpoint", "x", "--batch", "0", "-"], "--batch"),
    (["reward-eval", "--pairs", "README.md", "--batch", "0"], "--batch"),
    (["ablation", "--lr", "-inf"], "--lr"),
    (["shards", "--max-shard-mb", "nan"], "--max-shard-mb"),
    (["tokenizer", "--sample-mb", "inf"], "--sample-mb"),
    (["dedup", "--threshold", "nan"], "--threshold"),
    (["filter", "--lang-threshold", "nan"], "--lang-threshold"),
    # item 12: counts below their minimum
    (["sft", "--steps", "-5"], "--steps"),
    (["sft", "--epochs", "0"], "--epochs"),
    (["sft", "--epochs", "-1"], "--epochs"),
    (["sft", "--micro-batch", "-2"], "--micro-batch"),
    (["dpo", "--pairs", "README.md", "--batch-pairs", "0"], "--batch-pairs"),
    (["classify-train", "--labelled", "README.md", "--batch-size", "-4"], "--batch-size"),
    (["classify-train", "--labelled", "README.md", "--micro-batch", "-1"], "--micro-batch"),
    (["classify", "--checkpoint", "x", "--batch", "-3", "-"], "--batch"),
    (["chat", "--temperature", "-1"], "--temperature"),
    (["chat", "--top-k", "-5"], "--top-k"),
    (["chat", "--top-p", "0"], "--top-p"),
    (["chat", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["align-compare", "--prompts", "README.md", "--num-prompts", "-12"], "--num-prompts"),
    (["ppo", "--prompts", "README.md", "--iterations", "-1"], "--iterations"),
    (["benchmark", "--batch-size", "0"], "--batch-size"),
    # text with bytes that are not UTF-8 (argv reaches Python with them as lone surrogates)
    (["sample", "--instruction", "caf\udce9"], "--instruction"),
    (["sample", "--prompt", "caf\udce9"], "--prompt"),
    (["reward-score", "--prompt", "caf\udce9", "--response", "x"], "--prompt"),
    (["chat", "--system", "\udcff"], "--system"),
]


@pytest.mark.parametrize("args, option", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_bad_option_value_is_refused_naming_the_option(args, option):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


def test_evaluate_instructions_refuses_the_options_it_would_ignore(tmp_path):
    path = tmp_path / "i.json"
    path.write_text("[]")
    result = CliRunner().invoke(main, ["evaluate", "--instructions", str(path), "--seq-len", "5"])
    assert result.exit_code == 2 and "--seq-len does not apply to --instructions" in result.output


@pytest.mark.parametrize("out", [".", "/", "..", "DATA"])
def test_export_refuses_the_current_data_or_root_folder_as_its_out_folder(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["export", "--data", "data", "--out", "data" if out == "DATA" else out])
    assert result.exit_code == 2 and "an export needs a folder of its own" in result.output, result.output


@pytest.mark.parametrize("override", ["d_model=-64", "n_layer=0", "n_head=-4", "norm_eps=0", "rope_theta=nan"])
def test_ablation_refuses_an_override_that_builds_no_model_before_any_run(tmp_path, override):
    result = CliRunner().invoke(main, ["ablation", "--data", str(tmp_path), "--override", override])
    assert result.exit_code == 2 and "--override" in result.output, result.output
    assert not (tmp_path / "ablation").exists()
