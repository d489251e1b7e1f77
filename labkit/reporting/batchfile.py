"""reports/batch.json, what the last batches ran: per notebook its status, seconds, error,
parameters, the data/ runs it wrote, its HTML report and executed copy, and when. This
module alone writes and reads the file:

    batchfile.write(runs, out_dir)   # this batch's NotebookRuns; earlier notebooks kept, marked
    batchfile.read(out_dir)          # the entries, [] when there is no readable file
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

NAME = "batch.json"


@dataclass
class NotebookRun:
    """One notebook of a batch, as it ran."""

    name: str
    source: Path
    executed: Path
    html: Path | None
    ok: bool
    seconds: float
    error: str = ""
    parameters: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)  # data/ run directories the notebook wrote
    testbed: str = ""  # the testbed whose worker ran it (labkit.reporting.cluster); "" when run here


def read(out_dir: Path) -> list[dict]:
    """The notebooks' entries of OUT_DIR's batch.json ([] where it is missing or unreadable)."""
    try:
        return list(json.loads((Path(out_dir) / NAME).read_text()).get("notebooks", []))
    except (OSError, ValueError, AttributeError):
        return []


def write(runs: list[NotebookRun], out_dir: Path) -> Path:
    """OUT_DIR/batch.json: each notebook's status, seconds, parameters and data/ runs. A
    notebook of an earlier batch that this one did not run keeps its entry, marked
    `earlier`, so `labkit run ONE` does not make the others' reports disappear."""
    out = Path(out_dir) / NAME
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries = [
        {
            "name": r.name,
            "ok": r.ok,
            "seconds": round(r.seconds, 1),
            "error": r.error,
            "parameters": r.parameters,
            "runs": [str(p) for p in r.runs],
            "html": r.html.name if r.html else None,
            "executed": r.executed.name,
            "time_utc": now,
            "earlier": False,
        }
        for r in runs
    ]
    done = {r.name for r in runs}
    entries += [dict(e, earlier=True) for e in read(out_dir) if e.get("name") not in done]
    entries.sort(key=lambda e: e["name"])
    out.write_text(json.dumps({"time_utc": now, "notebooks": entries}, indent=2, default=str))
    return out
