"""What a class is doing: `labkit class status`.

Who holds the machine-wide measurement lock (labkit.teaching.students.MeasurementTurn) and who
waits for it, each login's slot, whether their server is up, and the testbeds they have live.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from labkit import cleanup
from labkit.teaching import students
from labkit.teaching.hub import DEFAULT_STATE, class_processes, hub_pid, read_class, slot_of
from labkit.testbed.runs import require_root


def lock_users(lock: Path | None = None) -> tuple[str, list[str]]:
    """Who holds the measurement lock ('' when nobody) and the slots of those waiting for it:
    a process waits while it has the lock file open without holding it (MeasurementTurn)."""
    lock = lock or students.LOCK_PATH
    try:
        holder = lock.read_text().strip()
    except OSError:
        holder = ""
    m = re.search(r"\(pid (\d+)\)", holder)
    holder_pid = int(m.group(1)) if m else None
    waiting = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == holder_pid:
            continue
        try:
            if not any(os.readlink(f) == str(lock) for f in (d / "fd").iterdir()):
                continue
            env = dict(e.split(b"=", 1) for e in (d / "environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        waiting.append(f"{env.get(students.ENV.encode(), b's00').decode()} (pid {d.name})")
    return holder, waiting


def status(state: str | Path = DEFAULT_STATE) -> dict:
    """The hub, each login's slot with its live server and testbeds, and the measurement lock."""
    require_root("reading the class's status")
    state = Path(state).resolve()
    info = read_class(state)
    namespaces = cleanup.leftovers(include_live=True)["namespaces"]
    holder, waiting = lock_users()
    rows = []
    for login in [info["instructor"], *info["students"]]:
        slot = slot_of(info, login)
        rows.append(
            {
                "login": login,
                "name": info["students"].get(login, {}).get("name", "instructor"),
                "slot": slot,
                "server": bool(class_processes(state, slot)),
                "testbeds": sorted({n[:6] for n in namespaces if n[7:].startswith(slot)}),
            }
        )
    pid = hub_pid(state)
    return {
        "hub": pid,
        "url": f"http://{info['ip']}:{info['port']}",
        "lock": holder,
        "waiting": waiting,
        "logins": rows,
    }


def print_status(st: dict) -> None:
    print(f"hub: {'running (pid %d) on %s/' % (st['hub'], st['url']) if st['hub'] else 'not running'}")
    print(
        f"measurement lock: {st['lock'] or 'free'}"
        + (f"; waiting: {', '.join(st['waiting'])}" if st["waiting"] else "")
    )
    print(f"{'login':<16} {'name':<24} {'slot':<5} {'server':<7} live testbeds")
    for r in st["logins"]:
        server = "yes" if r["server"] else "-"
        print(f"{r['login']:<16} {r['name'][:24]:<24} {r['slot']:<5} {server:<7} {' '.join(r['testbeds']) or '-'}")
