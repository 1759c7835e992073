"""Simulate a bare GPU machine (only torch, numpy and pyarrow installed) on a full development setup.

`bench/gpu_check.py --dry-run --bare` puts this folder first on PYTHONPATH, so Python imports this
file at start-up in the check and in every process it starts. Every package named in
CRAWLGPT_BLOCK_IMPORTS (comma-separated top-level names) is then set to None in sys.modules: importing
it raises ImportError and `importlib.util.find_spec` returns None, exactly as if it were not installed
(torch itself probes optional packages with find_spec). That shows the GPU check's code path really
needs nothing else.
"""

import os
import sys

for _name in os.environ.get("CRAWLGPT_BLOCK_IMPORTS", "").split(","):
    if _name.strip():
        sys.modules[_name.strip()] = None
