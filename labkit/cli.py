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
    from labkit import DATA_DIR, REPORTS_DIR, cleanup
    from labkit.reporting import batch
    from labkit.testbed import runs

    # every mistake in the request is found here, before root is needed or a kernel starts
    params = batch.load_parameters(args.parameters_file, args.parameter)
    batch.check(args.notebooks or None, params, smoke=args.smoke)
    if args.cluster or args.scheduler_file:  # the workers need root, not this machine
        from labkit.reporting import cluster

        done = cluster.run_all(
            args.notebooks or None,
            params,
            REPORTS_DIR,
            DATA_DIR,
            address=args.cluster,
            scheduler_file=args.scheduler_file,
            testbed=args.testbed,
            smoke=args.smoke,
            verbose=args.verbose,
        )
        return _summary(done, REPORTS_DIR)
    runs.require_root("running experiments")
    try:
        done = batch.run_all(
            args.notebooks or None,
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
    return _summary(done, REPORTS_DIR)


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
