"""Zero-shot benchmark tasks read from their public release files, formatted as lm-evaluation-harness does.

Every task becomes a list of `Item`s. An item is one question: a few (context, continuation) requests
and what counts as right. The text of each request follows the harness's task config (version noted
per task), so our accuracies are comparable with published ones:

| task | file (public release layout) | context | continuations | metrics |
|---|---|---|---|---|
| piqa | `piqa-valid.jsonl` + `piqa-valid-labels.lst` | `Question: {goal}\\nAnswer:` | ` {sol1}`, ` {sol2}` | acc, acc_norm |
| lambada | `lambada_test.jsonl` (OpenAI's detokenised test set) | the text up to its last space | ` {last word}` | acc, perplexity |
| hellaswag | `hellaswag_val.jsonl` (rowanz/hellaswag) | `{activity_label}: {ctx_a} {Ctx_b}` cleaned | ` {ending}` x 4 | acc, acc_norm |
| arc_easy, arc_challenge | `ARC-Easy-Dev.jsonl`, `ARC-Challenge-Test.jsonl`, ... (allenai ARC-V1) | `Question: {stem}\\nAnswer:` | ` {choice text}` | acc, acc_norm |
| winogrande | `dev.jsonl` (allenai winogrande_1.1) | the sentence up to `_` with the option put in | ` {rest of the sentence}` | acc |

The space before a continuation: the harness joins context and continuation with a single space
(`target_delimiter`), so the space belongs to the continuation and is scored; LAMBADA's continuation
carries its own space and no delimiter is added. Winogrande is scored the harness's "partial" way: the
two options change the context, and the shared rest of the sentence is the continuation scored.

This module needs no torch (the decontaminate stage reads benchmark text through it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or not in its public release layout; the message names file and line."""


@dataclass(frozen=True)
class Request:
    context: str
    """Text the model reads first (end-of-text is put before it when scored)."""
    continuation: str
    """Text whose log-likelihood given the context is measured."""


@dataclass(frozen=True)
class Item:
    id: str
    """Stable id: file stem and line number (or the file's own id)."""
    requests: tuple[Request, ...]
    """One request per answer choice (one in all for LAMBADA)."""
    label: int
    """Index of the right request."""
    choice_chars: tuple[int, ...]
    """Characters of each answer choice without the delimiter space: acc_norm divides by these."""
    passages: tuple[str, ...] = ()
    """The item's own text without the prompt scaffolding ("Question:", "Answer:"), as it would appear on a
    web page: question and answer together, one passage per choice. Decontamination matches these."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """Name used on the command line and in results."""
    files: tuple[str, ...]
    """File names looked for in the eval folder, first found wins (the first is the one written in help)."""
    kind: str
    """multiple_choice or last_word."""
    reader: Callable[[Path], list[Item]]
    """Reads the file into items."""
    citation: str
    """Where the data comes from."""


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise BenchmarkDataError(f"benchmark file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(f"{path}:{number}: not a JSON line ({err.msg})") from err
            if not isinstance(record, dict):
                raise BenchmarkDataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def _need(record: dict, path: Path, number: int, *fields: str) -> list:
    missing = [f for f in fields if f not in record]
    if missing:
        raise BenchmarkDataError(f"{path}:{number}: missing field(s) {missing}; is this the right file for the task?")
    return [record[f] for f in fields]


def _choices(item_id: str, context: str, choices: list[str], label: int, question: str, delimiter: str = " ") -> Item:
    return Item(item_id, tuple(Request(context, delimiter + c) for c in choices), label,
                tuple(len(c) for c in choices), tuple(f"{question} {c}" for c in choices))


def read_piqa(path: Path) -> list[Item]:
    """lm-eval `piqa`: `Question: {goal}\\nAnswer:`, choices sol1/sol2; labels in the .lst file beside it."""
    labels_path = path.with_name(path.name.replace(".jsonl", "-labels.lst"))
    if not labels_path.is_file():
        raise BenchmarkDataError(f"PIQA labels {labels_path} not found beside {path} (the release ships them "
                                 f"as <split>-labels.lst)")
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = []
    for i, (number, record) in enumerate(_jsonl(path)):
        goal, sol1, sol2 = _need(record, path, number, "goal", "sol1", "sol2")
        if i >= len(labels) or labels[i] not in ("0", "1"):
            raise BenchmarkDataError(f"{labels_path}: line {i + 1} should be 0 or 1 (one label per line of {path})")
        items.append(_choices(f"piqa-{number}", f"Question: {goal}\nAnswer:", [sol1, sol2], int(labels[i]), goal))
    if len(labels) != len(items):
        raise BenchmarkDataError(f"{labels_path} has {len(labels)} labels but {path} has {len(items)} questions")
    return items


def read_lambada(path: Path) -> list[Item]:
    """lm-eval `lambada_openai`: context = text up to the last space, continuation = ' ' + last word."""
    items = []
    for number, record in _jsonl(path):
        (text,) = _need(record, path, number, "text")
        context, _, word = text.rpartition(" ")
        if not context or not word:
            raise BenchmarkDataError(f"{path}:{number}: a LAMBADA passage needs a last word after a space")
        items.append(Item(f"lambada-{number}", (Request(context, " " + word),), 0, (len(word),), (text,)))
    return items


def _hellaswag_clean(text: str) -> str:
    """The harness's preprocess: strip, WikiHow's ' [title]' becomes '. ', other [tags] go, no double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path: Path) -> list[Item]:
    """lm-eval `hellaswag`: `{activity_label}: {ctx_a} {ctx_b capitalised}`, four cleaned endings."""
    items = []
    for number, record in _jsonl(path):
        label, ctx_a, ctx_b, endings, activity = _need(record, path, number, "label", "ctx_a", "ctx_b",
                                                       "endings", "activity_label")
        context = _hellaswag_clean(activity + ": " + ctx_a + " " + ctx_b.capitalize())
        choices = [_hellaswag_clean(e) for e in endings]
        items.append(_choices(f"hellaswag-{record.get('ind', number)}", context, choices, int(label),
                              ctx_a + " " + ctx_b))
    return items


def read_arc(path: Path) -> list[Item]:
    """lm-eval `arc_easy`/`arc_challenge`: `Question: {stem}\\nAnswer:`, the choice texts."""
    items = []
    for number, record in _jsonl(path):
        question, answer = _need(record, path, number, "question", "answerKey")
        try:
            stem, choices = question["stem"], question["choices"]
            labels = [c["label"] for c in choices]
            texts = [c["text"] for c in choices]
        except (KeyError, TypeError) as err:
            raise BenchmarkDataError(f"{path}:{number}: question needs stem and choices[label, text]") from err
        if answer not in labels:
            raise BenchmarkDataError(f"{path}:{number}: answerKey {answer!r} is not one of the labels {labels}")
        items.append(_choices(str(record.get("id", f"arc-{number}")), f"Question: {stem}\nAnswer:", texts,
                              labels.index(answer), stem))
    return items


def read_winogrande(path: Path) -> list[Item]:
    """lm-eval `winogrande` (partial scoring): contexts = sentence up to `_` with each option; continuation =
    ' ' + the rest of the sentence after `_`, stripped."""
    items = []
    for number, record in _jsonl(path):
        sentence, option1, option2, answer = _need(record, path, number, "sentence", "option1", "option2", "answer")
        if "_" not in sentence or str(answer) not in ("1", "2"):
            raise BenchmarkDataError(f"{path}:{number}: needs a '_' in the sentence and answer 1 or 2")
        cut = sentence.index("_")
        rest = " " + sentence[cut + 1:].strip()
        requests = tuple(Request(sentence[:cut] + option, rest) for option in (option1, option2))
        items.append(Item(str(record.get("qID", f"winogrande-{number}")), requests, int(answer) - 1,
                          (len(rest) - 1, len(rest) - 1),
                          tuple(sentence.replace("_", o, 1) for o in (option1, option2))))
    return items


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("piqa", ("piqa-valid.jsonl", "valid.jsonl"), "multiple_choice", read_piqa,
             "Bisk et al. 2020, PIQA validation (1,838 items)"),
    TaskSpec("lambada", ("lambada_test.jsonl",), "last_word", read_lambada,
             "Paperno et al. 2016, OpenAI's LAMBADA test set (5,153 items)"),
    TaskSpec("hellaswag", ("hellaswag_val.jsonl",), "multiple_choice", read_hellaswag,
             "Zellers et al. 2019, HellaSwag validation (10,042 items)"),
    TaskSpec("arc_easy", ("ARC-Easy-Test.jsonl", "ARC-Easy-Dev.jsonl"), "multiple_choice", read_arc,
             "Clark et al. 2018, AI2 ARC Easy"),
    TaskSpec("arc_challenge", ("ARC-Challenge-Test.jsonl", "ARC-Challenge-Dev.jsonl"), "multiple_choice",
             read_arc, "Clark et al. 2018, AI2 ARC Challenge"),
    TaskSpec("winogrande", ("winogrande-dev.jsonl", "dev.jsonl"), "multiple_choice", read_winogrande,
             "Sakaguchi et al. 2019, WinoGrande 1.1 dev (1,267 items)"),
]}


def task_file(name: str, eval_dir: str | Path, files: dict[str, str | Path] | None = None) -> Path:
    """The file of a task: an explicit `files[name]`, else the first of the task's release names in eval_dir."""
    if name not in TASKS:
        raise BenchmarkDataError(f"unknown benchmark {name!r}; choose from {', '.join(TASKS)}")
    if files and name in files:
        return Path(files[name])
    for candidate in TASKS[name].files:
        if (Path(eval_dir) / candidate).is_file():
            return Path(eval_dir) / candidate
    raise BenchmarkDataError(f"no file for benchmark {name!r} in {eval_dir} "
                             f"(looked for {', '.join(TASKS[name].files)}); "
                             f"point at it with --file {name}=PATH")


def load_task(name: str, eval_dir: str | Path, files: dict[str, str | Path] | None = None,
              limit: int | None = None) -> list[Item]:
    """The items of a task (the first `limit` of them when given)."""
    path = task_file(name, eval_dir, files)
    items = TASKS[name].reader(path)
    if not items:
        raise BenchmarkDataError(f"benchmark {name!r} has no items in {path}")
    return items[:limit] if limit else items


def chance_accuracy(items: list[Item], kind: str) -> float:
    """Expected accuracy of guessing uniformly among the choices (0 for last-word prediction)."""
    if kind == "last_word":
        return 0.0
    return sum(1 / len(item.requests) for item in items) / len(items)
