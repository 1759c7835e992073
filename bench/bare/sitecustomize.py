"""Simulate a bare GPU machine (only torch, numpy and pyarrow installed) on a full development setup.

`bench/gpu_check.py --dry-run --bare` puts this folder first on PYTHONPATH, so Python imports this
file at start-up in the check and in every process it starts. Importing any package named in
CRAWLGPT_BLOCK_IMPORTS (comma-separated top-level names) then fails as if it were not installed,
which shows that the GPU check's code path really needs nothing else.
"""

import importlib.abc
import os
import sys

_BLOCKED = {name.strip() for name in os.environ.get("CRAWLGPT_BLOCK_IMPORTS", "").split(",") if name.strip()}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: simulating a bare GPU machine)",
                                      name=fullname)
        return None


if _BLOCKED:
    sys.meta_path.insert(0, _Blocker())
