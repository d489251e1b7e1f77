"""Results: tidy tables plus a metadata file per run, versioned, never overwritten.

A run of an experiment writes ``data/<experiment>/<UTC time>-<run prefix>/``:

- ``results.csv``: one row per trial x variant x packet size x measure, with columns
  `COLUMNS` (then any experiment parameters as further columns);
- ``metadata.json``: when, where and how (time, git commit, kernel, CPU, package
  versions, offloads, parameters, caveats), with ``format_version``.

`load_runs()` reads every run of an experiment (of any format version this loader knows)
into one table, with the run's metadata keys as columns, for comparisons across runs and
machines.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit import DATA_DIR, ROOT, __version__, capabilities

FORMAT_VERSION = 1
COLUMNS = ["experiment", "run_id", "trial", "variant", "size", "measure", "value", "unit", "flags"]


class ResultSet:
    """Rows of one run of one experiment."""

    def __init__(self, experiment: str, params: dict, run_prefix: str | None = None, data_dir: Path | None = None):
        self.experiment = experiment
        self.params = dict(params)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.run_id = f"{stamp}-{run_prefix or 'lk' + os.urandom(2).hex()}"
        self.data_dir = Path(data_dir or DATA_DIR)
        self.rows: list[dict] = []
        self._caveats: dict[str, list] = {}
        self.run_dir: Path | None = None

    def add(self, variant: str, trial: int, size, measures: dict, flags=(), **extra) -> None:
        """Add one row per measure; MEASURES = {name: (value, unit)}."""
        for name, (value, unit) in measures.items():
            row = {
                "experiment": self.experiment,
                "run_id": self.run_id,
                "trial": trial,
                "variant": variant,
                "size": size,
                "measure": name,
                "value": float(value) if value is not None else float("nan"),
                "unit": unit,
                "flags": ";".join(flags),
            }
            row.update(extra)
            self.rows.append(row)

    def add_measurement(self, variant: str, trial: int, m, **extra) -> None:
        """Add every measure of a measure.Measurement."""
        self.add(variant, trial, m.size, m.measures(), m.flags, **extra)
        for where, n in m.lost_where.items():
            self.add(variant, trial, m.size, {f"lost_at:{where}": (n, "packets")}, m.flags, **extra)
        for note in getattr(m.offered, "notes", []):
            self.caveat(note.removeprefix("caveat: "), variant)

    def caveat(self, text: str, variant: str | None = None) -> None:
        """A warning a reader must see with the numbers (recorded in the metadata); the
        same warning for several variants is kept once, naming them."""
        text = re.sub(r"\blk[0-9a-f]{4}-", "", text)  # one caveat, whichever run's interface it named
        variants = self._caveats.setdefault(text, [])
        if variant and variant not in variants:
            variants.append(variant)

    @property
    def caveats(self) -> list[str]:
        return [f"{text} [{', '.join(v)}]" if v else text for text, v in self._caveats.items()]

    @property
    def table(self):
        import pandas as pd

        df = pd.DataFrame(self.rows)
        if df.empty:
            return pd.DataFrame(columns=COLUMNS)
        return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]

    def save(self, topology=None, extra: dict | None = None) -> Path:
        """Write results.csv and metadata.json into a new run directory; never overwrites."""
        run_dir = self.data_dir / self.experiment / self.run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        self.table.to_csv(run_dir / "results.csv", index=False)
        meta = collect_metadata(self.params, topology, extra)
        meta.update({"experiment": self.experiment, "run_id": self.run_id, "caveats": self.caveats})
        (run_dir / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
        self.run_dir = run_dir
        return run_dir


# ---------------------------------------------------------------- metadata
def _try(fn, default=None):
    try:
        return fn()
    except Exception as exc:  # metadata never crashes a run
        return default if default is not None else f"unavailable: {exc}"


def _cmd(argv) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()


def _cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _versions() -> dict:
    from importlib import metadata as md

    out = {"labkit": __version__, "python": platform.python_version()}
    for pkg in ("pandas", "pyroute2", "papermill", "matplotlib", "numpy"):
        out[pkg] = _try(lambda: md.version(pkg))
    out["bcc"] = _try(lambda: __import__("bcc").__version__)
    out["dpdk"] = _try(lambda: _cmd(["pkg-config", "--modversion", "libdpdk"]) or "not installed")
    out["trafgen"] = _try(lambda: _cmd(["trafgen", "-v"]).splitlines()[0])
    out["iptables"] = _try(lambda: _cmd(["iptables", "--version"]))
    return out


def _git() -> dict:
    commit = _try(lambda: _cmd(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or "unknown")
    dirty = _try(lambda: bool(_cmd(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])), False)
    return {"commit": commit, "dirty": dirty}


def _sysctls() -> dict:
    names = [
        "net.core.bpf_jit_enable",
        "net.core.netdev_max_backlog",
        "net.core.netdev_budget",
        "net.core.rmem_default",
        "kernel.unprivileged_bpf_disabled",
    ]
    return {n: _try(lambda n=n: Path("/proc/sys/" + n.replace(".", "/")).read_text().strip()) for n in names}


def collect_metadata(params: dict | None = None, topology=None, extra: dict | None = None) -> dict:
    """Everything a reader needs to know where and how numbers were measured."""
    u = platform.uname()
    meta = {
        "format_version": FORMAT_VERSION,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": u.node,
        "kernel": u.release,
        "kernel_version": u.version,
        "machine": u.machine,
        "cpu_model": _try(_cpu_model),
        "cpus": os.cpu_count(),
        "memory_gib": _try(lambda: round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)),
        "git": _try(_git),
        "versions": _try(_versions),
        "sysctls": _try(_sysctls),
        "parameters": params or {},
        "notebook": os.environ.get("LABKIT_NOTEBOOK"),  # set by `labkit report` for the notebook's kernel
        # which kernel facilities were probed (answer, reason) and which backend served each purpose
        "facilities": _try(capabilities.record),
    }
    if topology is not None:
        meta["topology"] = _try(topology.metadata)
    if extra:
        meta.update(extra)
    return meta


# ---------------------------------------------------------------- loading
@dataclass
class Run:
    path: Path
    table: object  # DataFrame
    metadata: dict = field(default_factory=dict)


def _upgrade(table, meta: dict):
    """Bring a table of an older format version to the current one."""
    version = int(meta.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise ValueError(f"results format {version} is newer than this labkit reads ({FORMAT_VERSION}): update labkit")
    if "flags" not in table.columns:  # format 0 (development runs) had no flags column
        table["flags"] = ""
    table["flags"] = table["flags"].astype("object").fillna("")
    return table


def load_run(path) -> Run:
    import pandas as pd

    path = Path(path)
    meta = json.loads((path / "metadata.json").read_text()) if (path / "metadata.json").exists() else {}
    table = _upgrade(pd.read_csv(path / "results.csv"), meta)
    return Run(path, table, meta)


def list_runs(experiment: str | None = None, data_dir: Path | None = None) -> list[Path]:
    base = Path(data_dir or DATA_DIR)
    pattern = f"{experiment}/*/results.csv" if experiment else "*/*/results.csv"
    return sorted(p.parent for p in base.glob(pattern))


def load_runs(experiment: str | None = None, data_dir: Path | None = None):
    """Every run of EXPERIMENT (or of all experiments) as one table, with kernel, host,
    cpu_model and commit of each run as columns."""
    import pandas as pd

    frames = []
    for path in list_runs(experiment, data_dir):
        try:
            run = load_run(path)
        except Exception:
            continue
        t = run.table.copy()
        for key in ("host", "kernel", "cpu_model", "time_utc"):
            t[key] = run.metadata.get(key)
        git = run.metadata.get("git")
        t["commit"] = git.get("commit") if isinstance(git, dict) else None
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def summarize(table, measures=None, by=("variant", "size")):
    """Mean, standard deviation, min, max and number of trials per group and measure."""
    t = table if measures is None else table[table["measure"].isin(measures)]
    by = [b for b in by if b in t.columns]
    g = t.groupby(list(by) + ["measure"])["value"]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["spread_pct"] = (out["max"] - out["min"]) / out["mean"].where(out["mean"] != 0) * 100
    return out


def wide(summary, stat: str = "mean", by=("variant", "size")):
    """A summary pivoted to one row per group and one column per measure."""
    by = [b for b in by if b in summary.columns]
    return summary.pivot_table(index=list(by), columns="measure", values=stat).reset_index()
