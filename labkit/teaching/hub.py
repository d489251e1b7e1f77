"""A class on one machine: JupyterHub with the roster's logins, one slot per student.

`labkit class start ROSTER` (``sudo make class ROSTER=students.csv``) writes the class file
``STATE/class.json`` (each login's slot ``s01``..``s99`` in roster order, the instructor's
``s00``, the ports), makes the student versions if they are missing (as `make labs` does),
and starts JupyterHub with labs/jupyterhub_config.py; the hub starts its proxy (the Python
configurable-http-proxy) and, as students log in, their servers (labkit.teaching.hub_spawner).
The instructor's password is set at the first start and written to
``STATE/instructor-password`` (readable by root only); students set theirs on the sign-up page.

`labkit class stop` stops the hub (which stops the servers and the proxy), ends any process
that still carries the class's mark (``LABKIT_CLASS_STATE`` in its environment: kernels,
services), and undoes every slot's testbeds and pinned maps. `labkit class status` says who
holds the measurement lock, who waits for it, and whose servers and testbeds are live.

The state folder (default ``class/`` in the checkout, not in git) holds the hub's database
(hashed passwords), its cookie secret, the students' folders and the nbgrader exchange.
"""

from __future__ import annotations

import contextlib
import csv
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from labkit import cleanup
from labkit.errors import InputError
from labkit.teaching import students
from labkit.testbed.runs import require_root

REPO = Path(__file__).resolve().parents[2]
LABS = REPO / "labs"
DEFAULT_STATE = REPO / "class"
VENV_BIN = Path(sys.executable).parent
MARK = "LABKIT_CLASS_STATE"  # in the environment of everything the class starts
PASSWORD_FILE = "instructor-password"  # in the state folder, root-only
LOGIN_RE = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
INSTRUCTOR_SLOT = students.DEFAULT_SLOT
COURSE_ID = "labkit-xdp"  # as labs/nbgrader_config.py


# ---------------------------------------------------------------- the roster
def read_roster(path: str | Path, instructor: str = "instructor") -> list[tuple[str, str]]:
    """(login, display name) per student of ROSTER: one login per line, optionally a comma
    and a display name; blank lines, '#' comments and a 'login,...' header are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"roster {path}: no such file (one login per line, optionally ',Display Name')")
    out, seen = [], set()
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            login = row[0].strip()
            if not out and login.lower() == "login":  # a header
                continue
            if not LOGIN_RE.match(login):
                raise InputError(
                    f"roster {path}, line {n}: login {login!r}: use lower-case letters, digits, '.', '_', '-' "
                    "(a letter first, at most 32)"
                )
            if login in seen or login == instructor:
                why = "twice" if login in seen else "and is the instructor's login"
                raise InputError(f"roster {path}, line {n}: {login!r} appears {why}")
            seen.add(login)
            out.append((login, ",".join(row[1:]).strip() or login))
    if not out:
        raise InputError(f"roster {path} names no student")
    if len(out) > 99:
        raise InputError(f"roster {path} has {len(out)} students; a machine has 99 slots (s01..s99)")
    return out


def class_info(roster, instructor, ip, port, state: Path, course: Path) -> dict:
    return {
        "students": {login: {"slot": f"s{i:02d}", "name": name} for i, (login, name) in enumerate(roster, 1)},
        "instructor": instructor,
        "ip": ip,
        "port": port,
        "hub_port": free_port(),
        "proxy_api_port": free_port(),
        "formgrader_port": free_port(),
        "state": str(state),
        "course": str(course),
        "release": str(course / "release"),
        "exchange": str(state / "exchange"),
        "venv_bin": str(VENV_BIN),
    }


def read_class(state: Path) -> dict:
    try:
        return json.loads((Path(state) / "class.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{state} holds no class (no class.json): start one with `sudo make class ROSTER=...`")


def slot_of(info: dict, login: str) -> str:
    if login == info["instructor"]:
        return INSTRUCTOR_SLOT
    return info["students"][login]["slot"]


def slots(info: dict) -> list[str]:
    return [INSTRUCTOR_SLOT] + [s["slot"] for s in info["students"].values()]


# ---------------------------------------------------------------- one server
def server_env(info: dict, login: str, slot: str, home: Path) -> dict:
    """The environment of LOGIN's server (and so of every kernel it starts)."""
    env = {
        "USER": login,
        "HOME": str(home),
        "SHELL": "/bin/bash",
        students.ENV: slot,
        MARK: info["state"],
        "LABKIT_EXCHANGE": info["exchange"],
        "LABKIT_DATA_DIR": str(home / "data"),
        "LABKIT_REPORTS_DIR": str(home / "reports"),
        "PATH": f"{info['venv_bin']}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    if login != info["instructor"]:
        # what students can use and nothing else (labs/README.md), plus their nbgrader settings
        env["JUPYTER_CONFIG_PATH"] = str(LABS / "hub-student-config")
    return env


def copy_lessons(release: Path, home: Path) -> list[str]:
    """Copy each released lesson not yet in HOME (a student's work is never overwritten)."""
    copied = []
    for lesson in sorted(p for p in release.iterdir() if p.is_dir()) if release.is_dir() else []:
        if not (home / lesson.name).exists():
            shutil.copytree(lesson, home / lesson.name)
            copied.append(lesson.name)
    return copied


def class_processes(state: Path, slot: str | None = None) -> list[int]:
    """Pids whose environment carries this class's mark (and SLOT, when given)."""
    want = f"{MARK}={state}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in env and (slot is None or f"{students.ENV}={slot}".encode() in env):
            out.append(int(d.name))
    return out


def end_processes(pids: list[int], grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL what is left after GRACE_S; the pids that existed."""
    ended = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            ended.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while ended and time.monotonic() < deadline and any(_alive(p) for p in ended):
        time.sleep(0.1)
    for pid in ended:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return ended


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def undo_slot(state: Path, slot: str) -> str:
    """End SLOT's leftover processes of this class (kernels a stopped server left), undo its
    testbeds and remove its pins; a one-line account ('' when there was nothing)."""
    pids = end_processes(class_processes(state, slot))
    # its own processes are ended above, so its runs are dead now: live runs (another user's, a
    # grading kernel, a run with no slot) are never touched
    removed = cleanup.clean(include_live=False, log=lambda m: None, student=slot)
    pins = students.clear_pins(slot)
    with contextlib.suppress(OSError):
        students.bpffs_dir(slot, create=False).rmdir()  # the slot's folder, once empty
    parts = [f"{len(pids)} processes"] if pids else []
    parts += [f"{len(v)} {k}" for k, v in removed.items() if v]
    parts += [f"{len(pins)} pins"] if pins else []
    return ", ".join(parts)


# ---------------------------------------------------------------- the hub
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds it
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


def hub_pid(state: Path) -> int | None:
    try:
        pid = int((state / "hub.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and pid in class_processes(state) else None  # not a reused pid


def nbgrader(course: Path, *args: str, exchange: Path | None = None) -> str:
    """Run nbgrader ARGS in the course folder (as the instructor); its output."""
    extra = [f"--Exchange.root={exchange}"] if exchange else []
    r = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args, *extra],
        cwd=course,
        env=dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", LABKIT_SMOKE="1"),
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise InputError(f"nbgrader {' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return r.stdout + r.stderr


# nbgrader's API in one process (starting nbgrader costs seconds each time): the student
# versions of the lessons named after '--generate' (as `make labs`), then every lesson of
# the release into the exchange (as `nbgrader release_assignment --force`).
_RELEASE = """
import sys
from pathlib import Path
from nbgrader.apps import NbGrader, NbGraderAPI
app = NbGrader()
app.config_file_paths.append(".")
app.load_config_file()
app.config.Exchange.root = sys.argv[1]
app.config.ExchangeReleaseAssignment.force = True
api = NbGraderAPI(config=app.config)
generate = sys.argv[sys.argv.index("--generate") + 1 :]
for lesson in generate:
    r = api.generate_assignment(lesson, force=True)
    if not r["success"]:
        sys.exit(f"nbgrader generate_assignment {lesson} failed: {r.get('error') or r.get('log')}")
for lesson in sorted(p.name for p in Path("release").iterdir() if p.is_dir()):
    r = api.release_assignment(lesson)
    if not r["success"]:
        sys.exit(f"nbgrader release_assignment {lesson} failed: {r.get('error') or r.get('log')}")
"""


def release(course: Path, exchange: Path, log=print) -> list[str]:
    """Make the student versions missing from COURSE/release (what `make labs` does) and
    release every lesson into EXCHANGE, so that students' servers can submit it; the lessons
    whose student versions were made."""
    lessons = [p.name for p in sorted((course / "source").iterdir()) if p.is_dir()]
    missing = [n for n in lessons if not (course / "release" / n).is_dir()]
    if missing:
        log(f"making the student versions of {len(missing)} lessons in {course / 'release'} (nbgrader)")
    r = subprocess.run(
        [sys.executable, "-c", _RELEASE, str(exchange), "--generate", *missing],
        cwd=course,
        env=dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}"),
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise InputError(r.stderr[-3000:])
    return missing


def grade(lesson: str, state: str | Path = DEFAULT_STATE, log=print) -> Path:
    """Collect LESSON's submissions from the exchange, autograde them (smoke mode) and export
    the gradebook as CSV; the CSV's path (STATE/grades.csv)."""
    require_root("grading (the notebooks load BPF)")
    info = read_class(Path(state).resolve())
    course, exchange = Path(info["course"]), Path(info["exchange"])
    if not (course / "source" / lesson).is_dir():
        raise InputError(f"no lesson {lesson!r} in {course / 'source'}")
    nbgrader(course, "collect", lesson, "--update", exchange=exchange)
    nbgrader(course, "autograde", lesson, "--force", "--create")
    out = Path(info["state"]) / "grades.csv"
    nbgrader(course, "export", f"--to={out}")
    log(f"{lesson}: collected and autograded; grades in {out}")
    return out


def start(
    roster: str | Path,
    port: int = 8000,
    ip: str = "127.0.0.1",
    state: str | Path = DEFAULT_STATE,
    instructor: str = "instructor",
    course: str | Path = LABS,
    log=print,
    wait_s: float = 60.0,
) -> dict:
    """Start the class's hub; the class file (with 'url' and 'seconds' to come up)."""
    began = time.monotonic()
    state = Path(state).resolve()
    if not LOGIN_RE.match(instructor):
        raise InputError(f"instructor login {instructor!r}: lower-case letters, digits, '.', '_', '-'")
    roster_ = read_roster(roster, instructor)
    if not 0 < int(port) < 65536:
        raise InputError(f"port {port}: a TCP port, 1-65535")
    require_root("starting the class (students' servers load BPF as root)")
    if hub_pid(state):
        raise InputError(f"a class is already running from {state}: `labkit class stop` first")
    if _port_taken(ip, int(port)):
        raise InputError(f"{ip}:{port} is in use: pick another with PORT=")
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    (state / "exchange").mkdir(exist_ok=True)
    os.chmod(state / "exchange", 0o777)  # nbgrader's exchange checks its mode
    info = class_info(roster_, instructor, ip, int(port), state, Path(course).resolve())
    (state / "class.json").write_text(json.dumps(info, indent=1) + "\n")
    env = dict(os.environ, **{MARK: str(state)}, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    pw_file = state / PASSWORD_FILE
    if not pw_file.exists():  # before the hub listens: the hub signs up the instructor with this password only
        pw_file.touch(mode=0o600)
        pw_file.write_text(secrets.token_urlsafe(12) + "\n")
    with open(state / "hub.log", "ab") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(LABS / "jupyterhub_config.py")],
            cwd=state,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (state / "hub.pid").write_text(f"{proc.pid}\n")
    hub_began = time.monotonic()
    try:  # while the hub starts
        release(Path(info["course"]), Path(info["exchange"]), log=log)
    except BaseException:
        stop(state, log=lambda m: None)
        raise
    url = f"http://{ip}:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/hub/api/", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() - hub_began > wait_s:
                tail = (state / "hub.log").read_text(errors="replace")[-3000:]
                if proc.poll() is None:
                    stop(state, log=lambda m: None)
                raise InputError(f"the hub did not come up within {wait_s:.0f} s; the end of {state}/hub.log:\n{tail}")
            time.sleep(0.25)
    pw_file = state / PASSWORD_FILE
    if not (state / "instructor-signed-up").exists():
        try:
            sign_up(url, instructor, pw_file.read_text().strip())
        except BaseException:
            stop(state, log=lambda m: None)
            raise
        (state / "instructor-signed-up").touch()
    info.update(url=url, seconds=round(time.monotonic() - began, 1))
    log(
        f"class hub on {url}/ ({len(roster_)} students, up in {info['seconds']} s); instructor login "
        f"'{instructor}', password in {pw_file}; students sign up with their login at {url}/hub/signup"
    )
    return info


def sign_up(url: str, login: str, password: str) -> None:
    """Set LOGIN's password on the hub's sign-up page (as a student does in the browser)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{url}/hub/signup", timeout=10) as r:
        page = r.read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page)
    form = {"username": login, "signup_password": password, "signup_password_confirmation": password}
    if xsrf:
        form["_xsrf"] = xsrf.group(1)
    with opener.open(f"{url}/hub/signup", data=urllib.parse.urlencode(form).encode(), timeout=10) as r:
        page = r.read().decode()
    if "alert-success" not in page and "successfully" not in page.lower():
        raise InputError(f"signing up {login} on {url} failed (the hub's sign-up page refused it)")


def stop(state: str | Path = DEFAULT_STATE, log=print, grace_s: float = 30.0) -> dict:
    """Stop the hub, its proxy, every server and service, and undo every slot's testbeds."""
    require_root("stopping the class")
    state = Path(state).resolve()
    info = read_class(state)
    pid = hub_pid(state)
    if pid:  # the hub stops the servers (each undoes its slot) and the proxy
        end_processes([pid], grace_s)
    left = end_processes(class_processes(state))
    undone = {s: u for s in slots(info) if (u := undo_slot(state, s))}
    (state / "hub.pid").unlink(missing_ok=True)
    log(
        ("class hub stopped" if pid else "no class hub was running")
        + (f"; {len(left)} leftover processes ended" if left else "")
        + "".join(f"; {s}: {u}" for s, u in undone.items())
    )
    return {"hub": pid, "leftover_processes": left, "undone": undone}
