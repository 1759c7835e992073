"""A tiny stand-in for pytest, for a GPU machine where only torch, numpy and pyarrow are installed.

    python bench/mini_pytest.py tests/train/test_train_gpu.py tests/model/test_model.py

It runs the subset of pytest the trainer's and model's tests use: test functions, `pytest.fixture`
(function, module and session scope, generator fixtures) from the test file and tests/conftest.py,
the built-in `tmp_path` and `tmp_path_factory`, `pytest.mark.parametrize` / `skipif` / `usefixtures`
(other marks are labels), `pytest.skip`, `pytest.raises(match=...)` and `pytest.approx`. When the
real pytest is importable it is used instead (this file then only runs `pytest -v` on the files).
Prints one line per test and a summary; the exit status is 1 when a test failed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import math
import re
import shutil
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

# --------------------------------------------------------------------------------------------------
# The `pytest` module the tests import


class Skipped(Exception):
    """Raised by pytest.skip()."""


class Mark:
    def __init__(self, name: str, args: tuple = (), kwargs: dict | None = None):
        self.name, self.args, self.kwargs = name, args, kwargs or {}

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):  # used as a decorator
            func = args[0]
            func.__dict__.setdefault("_marks", []).append(self)
            return func
        return Mark(self.name, args, kwargs)


class MarkNamespace:
    def __getattr__(self, name: str) -> Mark:
        return Mark(name)


class Fixture:
    def __init__(self, func, scope: str):
        self.func, self.scope, self.name = func, scope, func.__name__


def fixture(func=None, *, scope: str = "function", **_ignored):
    if func is None:
        return lambda f: Fixture(f, scope)
    return Fixture(func, scope)


def skip(reason: str = "") -> None:
    raise Skipped(reason)


@contextlib.contextmanager
def raises(expected, match: str | None = None):
    try:
        yield
    except expected as err:  # noqa: PERF203
        if match is not None and not re.search(match, str(err)):
            raise AssertionError(f"{type(err).__name__}({err!s}) does not match {match!r}") from err
        return
    raise AssertionError(f"did not raise {expected}")


class approx:  # noqa: N801 - the name pytest uses
    def __init__(self, expected, rel: float | None = None, abs: float | None = None):  # noqa: A002
        self.expected, self.rel, self.abs = expected, rel, abs

    def __eq__(self, actual) -> bool:
        rel = 1e-6 if self.rel is None and self.abs is None else (self.rel or 0.0)
        return math.isclose(actual, self.expected, rel_tol=rel, abs_tol=self.abs or 0.0)

    def __repr__(self) -> str:
        return f"approx({self.expected!r})"


def make_pytest_module() -> types.ModuleType:
    module = types.ModuleType("pytest")
    module.fixture, module.mark, module.skip = fixture, MarkNamespace(), skip
    module.raises, module.approx, module.__mini__ = raises, approx, True
    return module


# --------------------------------------------------------------------------------------------------
# Collection and running


class TmpPathFactory:
    def __init__(self, root: Path):
        self.root, self.count = root, itertools.count()

    def mktemp(self, name: str) -> Path:
        path = self.root / f"{name}{next(self.count)}"
        path.mkdir(parents=True)
        return path


def load_module(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def marks_of(func, module) -> list[Mark]:
    module_marks = getattr(module, "pytestmark", [])
    if isinstance(module_marks, Mark):
        module_marks = [module_marks]
    return list(module_marks) + list(reversed(func.__dict__.get("_marks", [])))


def expand(func, marks: list[Mark]) -> list[tuple[str, dict]]:
    """(id, parameters) for every combination of the parametrize marks."""
    cases = [("", {})]
    for mark in marks:
        if mark.name != "parametrize":
            continue
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else list(mark.args[0])
        rows = []
        for values in mark.args[1]:
            values = values if len(names) > 1 else (values,)
            rows.append(("-".join(str(v) for v in values), dict(zip(names, values))))
        cases = [(f"{a}-{b}".strip("-"), {**pa, **pb}) for a, pa in cases for b, pb in rows]
    return cases


class Runner:
    def __init__(self, fixtures: dict[str, Fixture], root: Path):
        self.fixtures, self.root = fixtures, root
        self.cache: dict[tuple[str, str], object] = {}
        self.finalizers: dict[str, list] = {"function": [], "module": [], "session": []}
        self.tmp_factory = TmpPathFactory(root)

    def value(self, name: str, scope_key: str):
        if name == "tmp_path":
            return self.tmp_factory.mktemp("tmp")
        if name == "tmp_path_factory":
            return self.tmp_factory
        if name not in self.fixtures:
            raise LookupError(f"fixture {name!r} not found")
        fix = self.fixtures[name]
        key = (name, scope_key if fix.scope == "module" else fix.scope)
        if fix.scope != "function" and key in self.cache:
            return self.cache[key]
        kwargs = {p: self.value(p, scope_key) for p in inspect.signature(fix.func).parameters}
        result = fix.func(**kwargs)
        if inspect.isgenerator(result):
            gen, result = result, next(result)
            self.finalizers["session" if fix.scope == "session" else fix.scope].append(gen)
        if fix.scope != "function":
            self.cache[key] = result
        return result

    def finish(self, scope: str) -> None:
        while self.finalizers[scope]:
            gen = self.finalizers[scope].pop()
            with contextlib.suppress(StopIteration):
                next(gen)
        if scope == "module":
            self.cache = {k: v for k, v in self.cache.items() if k[1] == "session"}


def run_files(paths: list[Path]) -> int:
    if sys.modules.get("pytest") is None:  # absent (or blocked by bench/bare/sitecustomize.py)
        sys.modules["pytest"] = make_pytest_module()
    first = paths[0].resolve()  # tests/<layer>/test_x.py: the shared fixtures live in tests/
    tests_dir = next((d for d in first.parents if (d / "conftest.py").is_file()), first.parent)
    sys.path[:0] = [str(tests_dir), str(tests_dir.parent)]
    fixtures: dict[str, Fixture] = {}
    conftest = tests_dir / "conftest.py"
    if conftest.is_file():
        fixtures.update({v.name: v for v in vars(load_module(conftest)).values() if isinstance(v, Fixture)})
    root = Path(tempfile.mkdtemp(prefix="mini-pytest-"))
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    runner = Runner(fixtures, root)
    start = time.perf_counter()
    try:
        for path in paths:
            module = load_module(path.resolve())
            runner.fixtures = {**fixtures, **{v.name: v for v in vars(module).values() if isinstance(v, Fixture)}}
            for name, func in list(vars(module).items()):
                if not (name.startswith("test_") and callable(func)):
                    continue
                marks = marks_of(func, module)
                for case_id, params in expand(func, marks):
                    test_id = f"{path.name}::{name}" + (f"[{case_id}]" if case_id else "")
                    outcome, detail = run_one(runner, func, marks, params, str(path))
                    counts[outcome] += 1
                    print(f"{outcome.upper():<8}{test_id}{(': ' + detail) if detail else ''}", flush=True)
            runner.finish("module")
        runner.finish("session")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
          f"in {time.perf_counter() - start:.1f}s (bench/mini_pytest.py)")
    return 1 if counts["failed"] else 0


def run_one(runner: Runner, func, marks: list[Mark], params: dict, scope_key: str) -> tuple[str, str]:
    for mark in marks:
        if mark.name == "skipif" and mark.args and mark.args[0]:
            return "skipped", mark.kwargs.get("reason", "")
        if mark.name == "skip":
            return "skipped", mark.kwargs.get("reason", "")
    try:
        for mark in marks:
            if mark.name == "usefixtures":
                for name in mark.args:
                    runner.value(name, scope_key)
        kwargs = {p: params[p] if p in params else runner.value(p, scope_key)
                  for p in inspect.signature(func).parameters}
        func(**kwargs)
        return "passed", ""
    except Skipped as err:
        return "skipped", str(err)
    except Exception:  # noqa: BLE001 - a failing test is reported, the run goes on
        return "failed", "\n" + traceback.format_exc()
    finally:
        runner.finish("function")


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # blocked (bench/bare/sitecustomize.py)
        return False


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv if not a.startswith("-")]
    if not paths:
        print(__doc__)
        return 2
    if "--force-mini" not in argv and has_module("pytest"):
        import subprocess

        return subprocess.call([sys.executable, "-m", "pytest", "-v", "-o", "addopts=", "-p", "no:cacheprovider",
                                *map(str, paths)])
    return run_files(paths)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
