"""Paths and names given to make reach the commands as one shell word each, whatever they hold:
an apostrophe (`INSTRUCT="John's data.json"`), spaces, double quotes or a backquote are never interpreted by
the shell (checked on make's dry run, parsed back as the shell would)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "John's data `y` ; \"z\".json"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(target: str, **variables: str) -> list[list[str]]:
    """The crawlgpt command lines make would run for target, split as the shell splits them."""
    args = ["make", "-n", "-C", str(REPO), "-o", ".venv/.installed", target, *(f"{k}={v}" for k, v in variables.items())]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.replace("\\\n", " ").splitlines()  # recipes continued with a backslash
    return [shlex.split(line)[1:] for line in lines if line.startswith(".venv/bin/crawlgpt ")]


def value_after(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


@pytest.mark.parametrize("target, variable, option", [
    ("sft", "INSTRUCT", "--instructions"),
    ("dpo", "PAIRS", "--pairs"),
    ("export", "EXPORT_DIR", "--out"),
    ("benchmark", "EVAL_DIR", "--eval-dir"),
    ("download", "SOURCE", "--source"),
    ("quality-model", "REFERENCE", "--reference"),
    ("decontaminate", "DECONTAMINATE", "--benchmark"),
])
def test_a_hostile_path_reaches_the_command_as_one_word(tmp_path, target, variable, option):
    value = HOSTILE.replace(" ", "_") if variable == "DECONTAMINATE" else HOSTILE  # a list: split on spaces
    data = str(tmp_path / "d'a ta")
    commands = [c for c in dry_run(target, **{variable: value, "DATA": data}) if c[0] != "stats"]
    assert commands, f"make -n {target} ran no crawlgpt command"
    wanted = [c for c in commands if option in c]
    assert wanted and all(value_after(c, option) == value for c in wanted)
    assert all(value_after(c, "--data") == data for c in commands if "--data" in c)


def test_make_ablation_passes_the_executor_to_the_raw_shards_too():
    commands = dry_run("ablation", EXECUTOR="ray", RAY_ADDRESS="10.0.0.5:6379")
    raw = [c for c in commands if c[0] == "shards" and value_after(c, "--from") == "raw"]
    assert raw and value_after(raw[0], "--executor") == "ray" and value_after(raw[0], "--ray-address") == "10.0.0.5:6379"
