"""Progress bars for long loops (trials, sweeps), as plain text. In a notebook that
`labkit report` runs, they go straight to the terminal (the kernel's original stderr) and
so never into the executed notebook or its HTML; elsewhere (a script, JupyterLab) to
sys.stderr."""

from __future__ import annotations

import os
import sys

_terminal = None


def _stream():
    global _terminal
    if not os.environ.get("LABKIT_NOTEBOOK"):
        return sys.stderr
    if _terminal is None:
        # ipykernel forwards file descriptor 2 into the notebook too; it keeps a copy of the
        # original one, which is the terminal of `labkit report`
        fd = getattr(sys.stderr, "_original_stdstream_copy", None)
        _terminal = open(os.dup(fd if fd is not None else 2), "w", buffering=1)
    return _terminal


def bar(total: int, desc: str, show: bool = True, unit: str = "trial"):
    """A text progress bar over TOTAL steps (one that prints nothing when SHOW is false)."""
    from tqdm.std import tqdm

    file = _stream() if show else None
    return tqdm(total=total, desc=desc, unit=unit, file=file, leave=False, dynamic_ncols=True, disable=not show)


def iterate(items, desc: str, show: bool = True, unit: str = "step"):
    """Iterate ITEMS with a progress bar."""
    items = list(items)
    with bar(len(items), desc, show, unit) as b:
        for item in items:
            yield item
            b.update()
