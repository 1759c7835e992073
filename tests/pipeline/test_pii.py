"""`crawlgpt pii`: e-mail and public IP addresses become placeholders; private ranges, obfuscated forms
and lookalikes (version numbers, dates, times) stay; the stage counts per kind, resumes, refuses a changed
config, and reads DATA/decontaminated when decontamination ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.documents import Document, read_documents
from pipeline.errors import StageConfigChanged
from formats.manifest import read_json
from pipeline.pii import PiiConfig, redact, run_pii
from cli.common import make_executor
from corpus_fixtures import finished_stage

REPO = Path(__file__).resolve().parents[2]
EMAIL, IPV4, IPV6 = "email@example.com", "22.214.171.124", "2001:db8::"


@pytest.mark.parametrize("text, expected", [
    ("Write to jane.doe@gmail.com today.", f"Write to {EMAIL} today."),
    ("<a href=\"mailto:info+news@mail.example-shop.co.uk\">", f"<a href=\"mailto:{EMAIL}\">"),
    ("https://shop.com/contact?email=bob@corp.io&x=1", f"https://shop.com/contact?email={EMAIL}&x=1"),
    ("Server at 93.184.216.34, port 80.", f"Server at {IPV4}, port 80."),
    ("http://8.8.8.8/dns-query", f"http://{IPV4}/dns-query"),
    ("ping 2606:4700:4700::1111 now", f"ping {IPV6} now"),
    ("[2a00:1450:4001:82a::200e]:443", f"[{IPV6}]:443"),
])
def test_addresses_are_replaced_including_inside_urls(text, expected):
    assert redact(text)[0] == expected


@pytest.mark.parametrize("text", [
    "router 192.168.1.1, host 10.0.0.7, nat 100.64.0.1, loopback 127.0.0.1, link-local 169.254.3.4",
    "docs use 192.0.2.10, 198.51.100.7 and 203.0.113.9; unspecified 0.0.0.0; broadcast 255.255.255.255",
    "v6: ::1, fe80::1ff:fe23:4567:890a, fd12:3456:789a::1, 2001:db8::8a2e:370:7334",
    "version 1.2.3.4.5 and release 10.1.2.3.4, not 999.1.1.1 nor 256.1.1.1",
    "dated 12.05.2024, at 12:30:45, build 2024.01.15.1234",
    "write to jane [at] example [dot] com or jane(at)example.com",
    "C++: std::vector<int>::iterator; a::b::c; IPv6 scope ::; MAC 00:1A:2B:3C:4D:5E; ratio 16:9:4",
])
def test_private_ranges_obfuscated_forms_and_lookalikes_are_left_alone(text):
    assert redact(text) == (text, {})


def test_counts_per_kind():
    text = "a@b.org c@d.net 1.1.1.1 2606:4700::1 10.0.0.1"
    redacted, counts = redact(text)
    assert counts == {"email": 2, "ipv4": 1, "ipv6": 1}
    assert redacted == f"{EMAIL} {EMAIL} {IPV4} {IPV6} 10.0.0.1"


def test_kinds_can_be_switched_off():
    text = "a@b.org 1.1.1.1"
    assert redact(text, PiiConfig(emails=False)) == (f"a@b.org {IPV4}", {"ipv4": 1})
    assert redact(text, PiiConfig(ips=False)) == (f"{EMAIL} 1.1.1.1", {"email": 1})


def test_a_second_pass_leaves_the_text_as_it_is():
    once, _ = redact("x@y.com 2606:4700::1")
    assert redact(once) == (once, {"email": 1})  # the placeholder is an address too; IPv6's is documentation


@pytest.fixture()
def data(tmp_path):
    finished_stage(tmp_path, "corpus", {
        "a": [Document("a-1", "Mail me: jo@example.net or 8.8.4.4", meta={"lang": "en"}),
              Document("a-2", "Nothing personal here; router 192.168.0.1.")],
        "b": [Document("b-1", "ip 2001:4860:4860::8888 and 1.1.1.1 and 1.0.0.1")]})
    return tmp_path


def test_the_stage_redacts_every_shard_and_counts_per_kind(data):
    m = run_pii(data)
    assert m["totals"]["docs_in"] == 3 and m["totals"]["kept"] == 3 and m["totals"]["dropped"] == {}
    assert m["totals"]["extra"] == {"pii_email": 1, "pii_ipv4": 3, "pii_ipv6": 1, "pii_documents": 2}
    assert m["input"] == "corpus"
    docs = {d.id: d for s in ("a", "b") for d in read_documents(data / "redacted" / f"{s}.parquet")}
    assert docs["a-1"].text == f"Mail me: {EMAIL} or {IPV4}"
    assert docs["a-1"].meta == {"lang": "en", "pii": {"email": 1, "ipv4": 1}}
    assert docs["a-2"].text == "Nothing personal here; router 192.168.0.1." and "pii" not in docs["a-2"].meta


def test_rerun_skips_finished_shards_and_a_changed_config_is_refused(data, caplog):
    first = run_pii(data)
    receipt = read_json(data / "redacted" / "_receipts" / "a.json")
    (data / "redacted" / "_receipts" / "b.json").unlink()  # as if killed before shard b finished
    with caplog.at_level("INFO"):
        second = run_pii(data)
    assert "1 of 2 shards already done" in caplog.text
    assert read_json(data / "redacted" / "_receipts" / "a.json") == receipt
    assert second["totals"] == first["totals"]
    with pytest.raises(StageConfigChanged, match="email_placeholder"):
        run_pii(data, PiiConfig(email_placeholder="[EMAIL]"))
    forced = run_pii(data, PiiConfig(email_placeholder="[EMAIL]"), force=True)
    assert forced["totals"]["extra"]["pii_email"] == 1
    assert next(read_documents(data / "redacted" / "a.parquet")).text.startswith("Mail me: [EMAIL]")


def test_the_stage_reads_the_decontaminated_corpus_when_there_is_one(data):
    finished_stage(data, "decontaminated", {"a": [Document("a-1", "only 9.9.9.9 left")]})
    m = run_pii(data)
    assert m["input"] == "decontaminated" and m["totals"]["docs_in"] == 1
    assert m["totals"]["extra"]["pii_ipv4"] == 1
    assert json.loads(json.dumps(m["upstream"])).keys() == {"decontaminated"}


@pytest.mark.slow
def test_the_stage_runs_on_the_ray_executor_with_identical_output(data, ray_cluster):
    local = run_pii(data)
    texts = {d.id: d.text for s in ("a", "b") for d in read_documents(data / "redacted" / f"{s}.parquet")}
    shutil.rmtree(data / "redacted")
    remote = run_pii(data, executor=make_executor("ray"))
    assert remote["totals"] == local["totals"]
    assert texts == {d.id: d.text for s in ("a", "b") for d in read_documents(data / "redacted" / f"{s}.parquet")}


def _make_dry_run(data, *args: str) -> str:
    """The commands `make -n shards` would run for DATA=data (nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    env = {k: v for k, v in os.environ.items() if k not in ("PII", "DECONTAMINATE", "SOURCE")}
    run = subprocess.run(["make", "-n", "-C", str(REPO), f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed",
                          f"DATA={data}", "shards", *args], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_make_pii_1_redacts_and_later_targets_remember_it(tmp_path):
    off = _make_dry_run(tmp_path)
    assert "crawlgpt pii" not in off and "--from corpus" in off
    on = _make_dry_run(tmp_path, "PII=1")
    assert "crawlgpt pii --data" in on and "tokenizer --data" in on and on.count("--from redacted") == 2
    (tmp_path / "redacted").mkdir()
    (tmp_path / "redacted" / "manifest.json").write_text("{}")  # as a finished `make corpus PII=1` leaves it
    later = _make_dry_run(tmp_path)
    assert "crawlgpt pii --data" in later and later.count("--from redacted") == 2
    assert "crawlgpt card --data" in later
