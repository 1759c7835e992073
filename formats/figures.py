"""PNG figures (loss curves, histograms, confusion matrices): matplotlib with the Agg backend, saved atomically.

matplotlib is optional (the trainer runs without it), so it is imported inside `pyplot`, and a caller
that gets None skips its plot with the warning it is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from formats.manifest import atomic_path

log = logging.getLogger(__name__)


def pyplot(missing: str) -> Any | None:
    """matplotlib.pyplot on the Agg backend (no display needed), or None after logging `missing`."""
    try:
        import matplotlib  # optional dependency: plots are skipped without it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("%s", missing)
        return None
    return plt


def save_figure(fig: Any, path: str | Path, **savefig_options: Any) -> Path:
    """Save `fig` as a PNG at `path` atomically (a temporary file beside it, then a rename) and close it."""
    import matplotlib.pyplot as plt  # optional dependency; callers got `fig` through `pyplot`

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", **savefig_options)
    finally:
        plt.close(fig)
    return path
