"""Many notebook runs across testbeds, with Dask distributed.

    labkit report --cluster tcp://scheduler:8786        # workers already running
    labkit report --scheduler-file /shared/scheduler.json
    labkit report --cluster local:2                     # two namespace testbeds here

A testbed (a machine, or the sender/dut/receiver of an inventory, or one namespace
testbed of a big machine) is served by exactly one Dask worker with one thread, started
with two resources: ``testbed=1`` and ``testbed-NAME=1``:

    dask worker tcp://scheduler:8786 --nthreads 1 --resources "testbed=1 testbed-lab1=1"

Each notebook run asks for ``testbed=1`` (or ``testbed-NAME=1`` with ``--testbed NAME``),
so the scheduler never puts two runs on one testbed at once, and nothing else ever
lands on a testbed worker. The worker executes the notebook as `labkit report` does
(`batch.execute`), into temporary folders of its own, and sends back the executed
notebook, its HTML and the data/ runs it wrote; they are written here, under the
submitting machine's reports/ and data/, each run's metadata naming its testbed and
worker host. The index page and batch.json are then written as for a local batch.

The request is checked (`batch.check`) before anything is submitted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from labkit import NOTEBOOKS_DIR
from labkit.errors import InputError, MissingDependency
from labkit.reporting import batch, batchfile
from labkit.reporting.batchfile import NotebookRun
from labkit.reporting.index import write_index

RESOURCE = "testbed"


def _distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDependency(
            "running on a Dask cluster needs distributed: run `sudo make setup` "
            "(or .venv/bin/pip install -r requirements.txt)"
        ) from None
    return distributed


def local_cluster(testbeds: int = 2):
    """A Dask cluster on this machine: one single-threaded worker process per namespace
    testbed (tb1, tb2, ...), each with its testbed's resources. Close it when done."""
    distributed = _distributed()
    if not isinstance(testbeds, int) or testbeds < 1:
        raise InputError(f"local:{testbeds}: give the number of testbeds, e.g. --cluster local:2")
    workers = {}
    for name in (f"tb{i}" for i in range(1, testbeds + 1)):
        resources = {RESOURCE: 1, f"{RESOURCE}-{name}": 1}
        options = {"nthreads": 1, "name": name, "resources": resources, "silence_logs": 40}
        workers[name] = {"cls": distributed.Nanny, "options": options}
    return distributed.SpecCluster(
        workers=workers,
        scheduler={"cls": distributed.Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}},
        silence_logs=40,
        name="labkit",
    )


def connect(address: str | None = None, scheduler_file: str | None = None):
    """(client, cluster or None): a Client of the scheduler at ADDRESS, of SCHEDULER_FILE's,
    or of a local cluster for ``local:N``."""
    distributed = _distributed()
    if scheduler_file:
        if not Path(scheduler_file).is_file():
            raise InputError(
                f"scheduler file {scheduler_file} does not exist: start the scheduler with "
                "`dask scheduler --scheduler-file FILE`"
            )
        return distributed.Client(scheduler_file=scheduler_file, timeout=30), None
    if address and address.startswith("local:"):
        try:
            cluster = local_cluster(int(address.split(":", 1)[1]))
        except ValueError:
            raise InputError(f"--cluster {address}: write local:N with N testbeds, e.g. local:2") from None
        client = distributed.Client(cluster)
        client.wait_for_workers(len(cluster.workers), timeout=120)
        return client, cluster
    try:
        return distributed.Client(address, timeout=30), None
    except OSError as exc:
        raise InputError(
            f"no Dask scheduler at {address}: {exc}; start one (`dask scheduler`) and a worker per "
            "testbed (docs/remote-hosts.md), or use --cluster local:N"
        ) from None


def run_notebook(name: str, parameters: dict, progress: bool = False, verbose: bool = False) -> dict:
    """On a testbed's worker: run notebook NAME into temporary folders, return its files
    ({relative path: bytes} under 'reports' and 'data') and how it went."""

    nb = batch.notebooks([name])[0]
    work = Path(tempfile.mkdtemp(prefix="labkit-worker-"))
    worker = _worker_name()
    try:
        r = batch.execute(nb, parameters, work / "reports", work / "data", progress, verbose)
        for run in r.runs:  # each run names where it ran
            meta_path = Path(run) / "metadata.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            meta.update(testbed=worker, worker_host=socket.gethostname())
            meta_path.write_text(json.dumps(meta, indent=2, default=str))
        files = {}
        for kind in ("reports", "data"):
            for p in sorted((work / kind).rglob("*")):
                if p.is_file():
                    files[f"{kind}/{p.relative_to(work / kind)}"] = p.read_bytes()
        return {
            "name": r.name,
            "ok": r.ok,
            "seconds": r.seconds,
            "error": r.error,
            "parameters": r.parameters,
            "executed": r.executed.name,
            "html": r.html.name if r.html else None,
            "runs": [str(Path(p).relative_to(work / "data")) for p in r.runs],
            "files": files,
            "testbed": worker,
            "worker_host": socket.gethostname(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return socket.gethostname()


def receive(result: dict, out_dir: Path, data_dir: Path) -> NotebookRun:
    """Write what a worker sent back under OUT_DIR and DATA_DIR; the NotebookRun of it.
    A data/ run is never overwritten: one whose directory exists here already is refused."""
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    for rel in result["runs"]:
        if (data_dir / rel).exists():
            raise InputError(
                f"data run {rel} came back from testbed {result['testbed']} but {data_dir / rel} "
                "exists already: raw data is never overwritten"
            )
    for rel, content in result["files"].items():
        kind, _, rest = rel.partition("/")
        path = (out_dir if kind == "reports" else data_dir) / rest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return NotebookRun(
        result["name"],
        NOTEBOOKS_DIR / f"{result['name']}.ipynb",
        out_dir / result["executed"],
        out_dir / result["html"] if result["html"] else None,
        result["ok"],
        result["seconds"],
        result["error"],
        result["parameters"],
        [data_dir / rel for rel in result["runs"]],
    )


def run_all(
    names,
    parameters: dict | None,
    out_dir: Path,
    data_dir: Path,
    *,
    address: str | None = None,
    scheduler_file: str | None = None,
    testbed: str | None = None,
    smoke: bool = False,
    progress: bool = False,
    log=print,
    directory: Path = NOTEBOOKS_DIR,
    verbose: bool = False,
    client=None,
) -> list[NotebookRun]:
    """`batch.run_all` on a Dask cluster: check the request, submit one task per notebook
    (each holding one testbed), gather as they finish, write what comes back, the index
    page and batch.json. Returns the NotebookRuns, each with `.testbed` set."""
    chosen = batch.check(names, parameters or {}, smoke, directory)
    params = dict(parameters or {}, **({"smoke": True} if smoke else {}))
    resources = {f"{RESOURCE}-{testbed}": 1} if testbed else {RESOURCE: 1}
    own, cluster = (client, None) if client is not None else connect(address, scheduler_file)
    distributed = _distributed()
    try:
        have = own.run_on_scheduler(_resources_offered)
        if not any(k in have for k in resources):
            raise InputError(
                f"no worker of the cluster offers {sorted(resources)}: start one worker per testbed "
                f'with --nthreads 1 --resources "{RESOURCE}=1 {RESOURCE}-NAME=1"; offered: '
                f"{sorted(have) or 'nothing'}"
            )
        t0 = time.monotonic()
        futures = {
            own.submit(
                run_notebook,
                nb.stem,
                params,
                progress,
                verbose,
                resources=resources,
                pure=False,
                key=f"labkit-{nb.stem}-{os.urandom(4).hex()}",
            ): nb.stem
            for nb in chosen
        }
        done = []
        for future in distributed.as_completed(futures):
            result = future.result()
            run = receive(result, out_dir, data_dir)
            run.testbed = result["testbed"]
            log(
                f"{run.name} on testbed {result['testbed']} ({result['worker_host']}): "
                f"{'ok' if run.ok else 'FAILED'} in {run.seconds:.0f} s" + (f": {run.error}" if run.error else "")
            )
            done.append(run)
        done.sort(key=lambda r: r.name)
        log(f"{len(done)} notebooks on the cluster in {time.monotonic() - t0:.0f} s")
        write_index(done, out_dir, data_dir)
        batchfile.write(done, out_dir)
        return done
    finally:
        if client is None:
            own.close()
        if cluster is not None:
            cluster.close()


def _resources_offered(dask_scheduler=None) -> list:
    return sorted({r for ws in dask_scheduler.workers.values() for r in (ws.resources or {})})
