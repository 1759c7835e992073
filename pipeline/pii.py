"""PII redaction (`crawlgpt pii`): replace e-mail addresses and public IP addresses with placeholders.

FineWeb's last step (datatrove's `PIIFormatter`): every e-mail address becomes `email@example.com` and
every *public* IPv4 address `22.214.171.124` (datatrove's first placeholders), so that the corpus does not
teach a model anyone's address. We add IPv6 (placeholder `2001:db8::`, a documentation address).
Whether an IP address is public is decided by Python's `ipaddress` (`is_global`): private, loopback,
link-local, shared (CGNAT), multicast and documentation ranges are left as they are.

What is not replaced, on purpose:
- obfuscated forms (`jane [at] example [dot] com`, `jane(at)example.com`): matching them well needs a
  much looser pattern that also hits ordinary prose;
- text that only looks like an address: `1.2.3.4.5` (a version number), `999.1.1.1` (not an address),
  `12.05.2024` (a date), `12:30:45` (a time). An IPv4 address must not touch another digit or a dot
  followed by a digit; every candidate must also parse as an address.
- an address inside a URL *is* replaced (`http://93.184.216.34/x`, `mailto:jane@example.org`): it is
  the same address. Unlike datatrove's pattern, the local part of an e-mail address may not hold
  `/ ? = &`, so `site.com/contact?mail=jo@x.org` loses the address, not the URL.

The stage runs after dedup (and after decontamination when that ran): DATA/decontaminated if it has a
manifest, else DATA/corpus, in; DATA/redacted out. Every document is kept (the text is edited, so
this is a formatter, not a filter); a document with replacements gets `meta["pii"]` = counts per kind.
The manifest's `totals.extra` holds `pii_email`, `pii_ipv4`, `pii_ipv6` (replacements) and
`pii_documents` (documents with at least one). Through the one stage runner, like every stage.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.documents import Document, DocumentWriter, read_documents
from pipeline.errors import ConfigError
from formats.manifest import manifest_hash, output_record
from pipeline.stage import Executor, Progress, ShardStats, ShardTask, report_progress, run_stage, stage_documents

STAGE = "pii"
OUTPUT_DIR = "redacted"
#: Input folders, in order of preference: the first with a manifest is read.
INPUT_DIRS = ("decontaminated", "corpus")
KINDS = ("email", "ipv4", "ipv6")

# datatrove's e-mail pattern (RFC 5322 local part; a dotted domain or a bracketed IPv4 literal), except that
# the local part may not hold / ? = &: with them, `site.com/contact?mail=jo@x.org` was one "address".
_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%'*+^_`{|}~-]+(?:\.[A-Za-z0-9!#$%'*+^_`{|}~-]+)*@"
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"|\[(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\])"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
# Not preceded by a digit or a dot, not followed by a digit or by a dot and a digit: 1.2.3.4.5 is no address.
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\d|\.\d)")
# Candidates only (hex groups and colons, maybe a dotted IPv4 tail); `ipaddress` decides what is one.
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?(?![0-9A-Za-z:])"
)


@dataclass(frozen=True)
class PiiConfig:
    """What is replaced, and by what."""

    emails: bool = True
    """Replace e-mail addresses."""
    ips: bool = True
    """Replace public IPv4 and IPv6 addresses (private, loopback, documentation ... ranges are kept)."""
    email_placeholder: str = "email@example.com"
    """What an e-mail address becomes (datatrove's first placeholder)."""
    ipv4_placeholder: str = "22.214.171.124"
    """What a public IPv4 address becomes (datatrove's first placeholder)."""
    ipv6_placeholder: str = "2001:db8::"
    """What a public IPv6 address becomes (a documentation address, so a second pass leaves it)."""

    def validate(self) -> None:
        if not (self.emails or self.ips):
            raise ConfigError("--no-emails/--no-ips", "both given: nothing would be redacted")


def is_public_ip(text: str) -> bool:
    """Whether `text` is an IP address outside every special-purpose range (`ipaddress`'s is_global)."""
    try:
        return ipaddress.ip_address(text).is_global
    except ValueError:
        return False


def redact(text: str, config: PiiConfig = PiiConfig()) -> tuple[str, Counter]:
    """`text` with its e-mail and public IP addresses replaced, and the replacements per kind."""
    counts: Counter = Counter()

    def replace(kind: str, placeholder: str, check: Callable[[str], bool] | None):
        def sub(match: re.Match) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return placeholder
        return sub

    if config.emails and "@" in text:
        text = _EMAIL.sub(replace("email", config.email_placeholder, None), text)
    if config.ips and "." in text:
        text = _IPV4.sub(replace("ipv4", config.ipv4_placeholder, is_public_ip), text)
    if config.ips and ":" in text:
        text = _IPV6.sub(replace("ipv6", config.ipv6_placeholder, is_public_ip), text)
    return text, counts


def pii_shard(task: ShardTask, stage_dir: Path, config: PiiConfig) -> ShardStats:
    """Stage function: one corpus shard -> the same documents, redacted, with counts per kind."""
    stats = ShardStats()
    totals: Counter = Counter()
    documents = 0
    out_path = stage_dir / f"{task.name}.parquet"
    with DocumentWriter(out_path) as out:
        for doc in read_documents(task.inputs[0]):
            stats.docs_in += 1
            text, counts = redact(doc.text, config)
            meta = doc.meta
            if counts:
                documents += 1
                totals.update(counts)
                meta = {**doc.meta, "pii": dict(sorted(counts.items()))}
            out.write(Document(doc.id, text, doc.url, doc.source, meta))
            stats.kept += 1
            report_progress(1)
    stats.outputs = [output_record(out_path, out.rows, stage_dir)]
    stats.extra = {**{f"pii_{k}": totals[k] for k in KINDS}, "pii_documents": documents}
    return stats


def input_dir(data_dir: str | Path) -> Path:
    """The folder the stage reads: DATA/decontaminated when decontamination ran, else DATA/corpus."""
    data_dir = Path(data_dir)
    for name in INPUT_DIRS:
        if (data_dir / name / "manifest.json").exists():
            return data_dir / name
    return data_dir / INPUT_DIRS[-1]


def run_pii(data_dir: str | Path, config: PiiConfig = PiiConfig(), workers: int = 1, force: bool = False,
            on_progress: Callable[[Progress], None] | None = None, executor: Executor | None = None) -> dict:
    """DATA/decontaminated (or DATA/corpus) -> DATA/redacted; return the manifest."""
    config.validate()
    data_dir = Path(data_dir)
    source = input_dir(data_dir)
    inputs = stage_documents(source, "corpus")
    tasks = [ShardTask(Path(p).name.removesuffix(".parquet"), (str(p),)) for p in inputs]

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        manifest["input"] = source.name
        return manifest

    return run_stage(STAGE, data_dir / OUTPUT_DIR, config, tasks, pii_shard, workers=workers, force=force,
                     upstream={source.name: manifest_hash(source)}, on_progress=on_progress, finalize=finalize,
                     executor=executor)
