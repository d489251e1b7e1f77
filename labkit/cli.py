"""The labkit command line: `labkit` or `python -m labkit`.

labkit report [NOTEBOOK ...] [-p [NOTEBOOK:]NAME VALUE] [-f FILE.yaml] [--smoke] [--verbose]
      run every experiment notebook (or those named) headlessly; HTML in reports/,
      tables in data/, reports/index.html and reports/batch.json last. Exits 1 if any
      notebook failed (its one-line error and executed notebook are printed; --verbose
      adds the traceback). -p NAME VALUE goes to every notebook that declares NAME,
      -p 01-xdp-drop:trials 5 to that notebook only; a YAML file may hold NAME: VALUE
      lines and sections named after notebooks (01-xdp-drop: {trials: 5}).
      Every name and value is checked against what the notebooks and their experiments
      declare before anything runs: a mistake is one line on stderr and exit code 2.
      LABKIT_REPORTS_DIR and LABKIT_DATA_DIR put reports and tables elsewhere.
labkit run NOTEBOOK [...]   the same for the notebooks named (at least one)
      --cluster ADDRESS (or --scheduler-file FILE) runs them on Dask workers, one per testbed,
      and brings the executed notebooks and data/ runs back here; --cluster local:N makes
      N namespace testbeds on this machine (labkit.reporting.cluster)
labkit export RUN... -o FILE.zip [--force]
      the runs as an RO-Crate: tables, metadata, executed notebooks and HTML, the parameters
      as run, the environment (pip freeze, Debian packages, kernel and its configuration's
      hash, labkit's commit and dirty flag), every file's sha256 (labkit.reporting.crate)
labkit rerun FILE.zip [--no-progress] [--verbose]
      check the crate's checksums, run its notebooks again here with the same parameters
      (as `labkit run`), name every difference of environment, and compare each new run
      with the packaged one (compare_runs); also as reports/rerun-FILE.html
labkit bench [--smoke]      the benchmark: drop rates at 64 bytes, program costs, generators
labkit clean [--all] [--inventory INVENTORY]
                            remove what crashed runs left (namespaces, links, XDP, rules),
                            on every host of INVENTORY too
labkit provision INVENTORY [--check]
                            make the inventory's hosts ready (deploy/site.yml, with Ansible)
labkit doctor               what is installed, what is missing for which experiment
labkit watch [IFACE|NETNS:IFACE|RUN ...] [-i SECONDS] [-n LINES]
      per-second rx/tx packets and bits, drops and attached XDP programs' counters
      (default: every interface of the live labkit runs)
labkit class start ROSTER [--port 8000] [--ip 127.0.0.1] [--state DIR]
labkit class stop | status | grade LESSON [--state DIR]
      a class on this machine: JupyterHub with the roster's logins, one slot per student
      (sudo make class ROSTER=students.csv); stop ends the hub, its servers and every
      student's testbeds; status: the measurement lock's holder and waiters, live testbeds;
      grade: collect LESSON's submissions, autograde them, grades as CSV (STATE/grades.csv)
labkit trend [-e EXPERIMENT] [--testbed TEXT] [--csv FILE]
      each experiment's headline ratios over every stored run in data/, per testbed,
      grouped by jumpavg: one line per regression or progression (or "no change");
      --csv (-o) writes every point (labkit.reporting.trend)
"""

from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line and exit code 2, like every other mistake."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def _params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebooks", nargs="*", help="notebook names, e.g. 01-xdp-drop (default: all)")
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        default=[],
        help="set a notebook parameter (value read as YAML: -p sizes '[64, 1500]'); "
        "NOTEBOOK:NAME for one notebook only; "
        "e.g. -p receiver_if eth1 -p sender_if eth2 to measure real NICs",
    )
    p.add_argument(
        "-f",
        "--parameters-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML file of NAME: VALUE parameters (several allowed; -p wins)",
    )
    p.add_argument("--smoke", action="store_true", help="seconds-long runs (smoke=True)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="a failed notebook's traceback too, not only its one-line error"
    )
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run the notebooks on a Dask cluster (tcp://HOST:8786), one at a time per testbed; "
        "local:N for N namespace testbeds on this machine",
    )
    p.add_argument("--scheduler-file", metavar="FILE", help="the Dask cluster whose scheduler wrote FILE")
    p.add_argument("--testbed", metavar="NAME", help="with --cluster: only on the worker of testbed NAME")


def cmd_report(args) -> int:
    from labkit import REPORTS_DIR
    from labkit.reporting import batch

    # every mistake in the request is found here, before root is needed or a kernel starts
    params = batch.load_parameters(args.parameters_file, args.parameter)
    batch.check(args.notebooks or None, params, smoke=args.smoke)
    return _summary(_run_batch(args.notebooks or None, params, args), REPORTS_DIR)


def _run_batch(names, params: dict, args) -> list:
    """A checked request run, on a Dask cluster (--cluster) or here as root, with what dead runs
    left removed afterwards: the one path of `labkit report`, `run` and `rerun`."""
    from labkit import DATA_DIR, REPORTS_DIR, cleanup
    from labkit.reporting import batch
    from labkit.testbed import runs

    if args.cluster or args.scheduler_file:  # the workers need root, not this machine
        from labkit.reporting import cluster

        return cluster.run_all(
            names,
            params,
            REPORTS_DIR,
            DATA_DIR,
            address=args.cluster,
            scheduler_file=args.scheduler_file,
            testbed=args.testbed,
            smoke=args.smoke,
            verbose=args.verbose,
        )
    runs.require_root("running experiments")
    try:
        return batch.run_all(
            names,
            params,
            REPORTS_DIR,
            DATA_DIR,
            smoke=args.smoke,
            progress=not args.no_progress,
            verbose=args.verbose,
        )
    finally:
        # a kernel killed outright cannot undo what it made: remove what its dead runs left
        # (runs registered here only: another run's testbed on this machine is never touched)
        cleanup.clean_dead_runs(log=lambda msg: print(f"labkit {args.command}: {msg}", file=sys.stderr))


def _summary(done, reports_dir) -> int:
    failed = [r.name for r in done if not r.ok]
    print(
        f"reports in {reports_dir}/index.html: {len(done) - len(failed)} ok, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
    )
    return 1 if failed else 0


def cmd_run(args) -> int:
    if not args.notebooks:
        from labkit.reporting import batch

        names = ", ".join(p.stem for p in batch.notebooks())
        print(f"labkit run: name at least one notebook ({names}); `labkit report` runs them all", file=sys.stderr)
        return 2
    return cmd_report(args)


def cmd_clean(args) -> int:
    from labkit import cleanup

    if args.inventory:
        cleanup.clean_hosts(args.inventory, include_live=args.all)
    removed = cleanup.clean(include_live=args.all)
    if not any(removed.values()):
        print("nothing to clean: no leftovers of labkit runs")
    return 0


def cmd_provision(args) -> int:
    from labkit import provision

    provision.provision(args.inventory, check=args.check)
    return 0


def cmd_bench(args) -> int:
    from labkit import bench

    return bench.main(smoke=args.smoke)


def cmd_doctor(args) -> int:
    from labkit import doctor

    return doctor.main()


def cmd_watch(args) -> int:
    from labkit.measure import watch

    return watch.main(args.targets, args.interval, args.count)


def cmd_export(args) -> int:
    from labkit.reporting import crate

    out = crate.export(args.runs, args.output, force=args.force)
    for path, size, kind in out.files:
        print(f"  {path}  {size:,} bytes  {kind}")
    for note in out.notes:
        print(f"labkit export: {note}", file=sys.stderr)
    print(
        f"{out.path}: an RO-Crate of {len(out.files)} files, {out.bytes:,} bytes; `labkit rerun {out.path}` runs it again"
    )
    return 0


def cmd_rerun(args) -> int:
    from labkit import DATA_DIR, REPORTS_DIR
    from labkit.reporting import batch, crate_check, rerun

    with crate_check.opened(args.crate) as packaged, rerun.refusing(packaged) as notes:
        names, params = rerun.request(packaged)
        batch.check(names, params)  # before root is needed or a kernel starts
        print(f"rerunning {', '.join(f'{n} with {params[n]}' for n in names)}")
        done = _run_batch(names, params, args)
        outcome = rerun.outcome(packaged, done, REPORTS_DIR, DATA_DIR, notes)
    print(outcome.text)
    return 0 if outcome.ok and all(r.ok for r in done) else 1


def cmd_trend(args) -> int:
    from labkit.reporting import trend

    return trend.main(args.experiment, args.testbed, args.csv)


def cmd_class(args) -> int:
    from labkit.teaching import hub

    state = args.state or hub.DEFAULT_STATE
    if args.action == "start":
        if not args.roster:
            print(
                "labkit class start: name the roster (one login per line, optionally ',Display Name')", file=sys.stderr
            )
            return 2
        hub.start(args.roster, port=args.port, ip=args.ip, state=state, instructor=args.instructor)
    elif args.action == "stop":
        hub.stop(state)
    elif args.action == "grade":
        if not args.roster:
            print("labkit class grade: name the lesson, e.g. 02-first-xdp", file=sys.stderr)
            return 2
        hub.grade(args.roster, state)
    else:
        from labkit.teaching import hub_status

        hub_status.print_status(hub_status.status(state))
    return 0


def main(argv=None) -> int:
    parser = _Parser(
        prog="labkit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="run every experiment notebook and write reports/")
    _params_args(p)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("run", help="run the named experiment notebooks")
    _params_args(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("bench", help="the benchmark (make bench)")
    p.add_argument("--smoke", action="store_true")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("clean", help="remove leftovers of crashed runs (labkit prefix only)")
    p.add_argument("--all", action="store_true", help="also runs whose process is still alive")
    p.add_argument("--inventory", metavar="INVENTORY", help="also on every host of this Ansible YAML inventory")
    p.set_defaults(fn=cmd_clean)
    p = sub.add_parser("provision", help="make an inventory's hosts ready (deploy/site.yml through ansible-runner)")
    p.add_argument("inventory", metavar="INVENTORY", help="an Ansible YAML inventory (docs/remote-hosts.md)")
    p.add_argument("--check", action="store_true", help="Ansible's check mode: say what would change, change nothing")
    p.set_defaults(fn=cmd_provision)
    p = sub.add_parser("doctor", help="what is installed and what each experiment needs")
    p.set_defaults(fn=cmd_doctor)
    p = sub.add_parser("watch", help="per-second rates of interfaces and their XDP programs' counters")
    p.add_argument("targets", nargs="*", help="IFACE, NETNS:IFACE or a run prefix lkXXXX (default: live runs)")
    p.add_argument("-i", "--interval", type=float, default=1.0, help="seconds per line (default 1)")
    p.add_argument("-n", "--count", type=int, default=None, help="stop after this many lines")
    p.set_defaults(fn=cmd_watch)
    p = sub.add_parser("export", help="runs as an RO-Crate zip that anyone can run again (labkit rerun)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run id (or its unique start, e.g. lk3a1d) or run folder")
    p.add_argument("-o", "--output", metavar="FILE.zip", help="the crate to write")
    p.add_argument("--force", action="store_true", help="overwrite FILE.zip if it exists")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("rerun", help="run a crate's notebooks again here and compare the new runs with its own")
    p.add_argument("crate", metavar="FILE.zip", help="a crate written by labkit export (or linked from the index)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="a failed notebook's traceback too")
    p.set_defaults(fn=cmd_rerun, smoke=False, cluster=None, scheduler_file=None, testbed=None)
    p = sub.add_parser("trend", help="headline ratios over the stored runs of each testbed, changes named (jumpavg)")
    p.add_argument("-e", "--experiment", metavar="EXPERIMENT", help="only this experiment (xdp_drop, l2fwd, nat)")
    p.add_argument("--testbed", metavar="TEXT", help="only the testbeds whose label or machine contains TEXT")
    p.add_argument("--csv", "-o", metavar="FILE", help="also write every run's value of every headline as CSV")
    p.set_defaults(fn=cmd_trend)
    p = sub.add_parser("class", help="a class on this machine: JupyterHub, one slot per student (start, stop, status)")
    p.add_argument("action", choices=["start", "stop", "status", "grade"])
    p.add_argument(
        "roster",
        nargs="?",
        metavar="ROSTER|LESSON",
        help="start: one login per line, optionally ',Display Name'; grade: a lesson",
    )
    p.add_argument("--port", type=int, default=8000, help="the hub's port (default 8000)")
    p.add_argument("--ip", default="127.0.0.1", help="the hub's address (default 127.0.0.1)")
    p.add_argument("--instructor", default="instructor", help="the instructor's login (default instructor)")
    p.add_argument("--state", metavar="DIR", help="the class's state folder (default class/ in the checkout)")
    p.set_defaults(fn=cmd_class)
    args = parser.parse_args(argv)
    from labkit.errors import LabkitError

    try:
        return args.fn(args)
    except LabkitError as exc:
        print(f"labkit {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted; kernel state was undone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
