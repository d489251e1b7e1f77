"""A class on one machine, as its students and instructor meet it: the real hub
(`labkit class start`: JupyterHub, its Python proxy, NativeAuthenticator, the students'
servers as root with their slots), driven in headless Chromium (Debian's, by Playwright).

Two students sign up (setting their passwords) and log in at the same time; each opens
lesson 02 in their own server and writes exercise 1 in the cell editor, one right and one
with the EtherType compared in host order, runs the notebook and sees the check's expected
against actual; both submit with the Submit button of nbgrader's assignment list. The
instructor opens the formgrader (a hub service that students are refused), stops a
student's server as the idle culler does (the testbed a kernel of theirs held goes with it),
collects, autogrades and exports the grades as CSV. A wrong password is refused, a student
cannot reach the other's server, and `labkit class stop` leaves no process, namespace or pin.

Everything goes to temporary folders: the class's state, and a course folder holding
lesson 02 only (its student version is made there); the hub listens on a free port.
About three minutes on the 2-core development machine.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit.errors import InputError
from labkit.teaching import hub, hub_status, students

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LESSON = "02-first-xdp"
TIMEOUT_MS = 180_000  # servers start and BPF compiles on a shared 2-core machine

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -r requirements.txt)")
pytest.importorskip("jupyterhub", reason="needs jupyterhub (pip install -r requirements.txt)")

RIGHT = """%%bpf ipv4_drop
#include <linux/if_ether.h>
int xdp_main(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return XDP_DROP;
    return XDP_PASS;
}"""
WRONG = RIGHT.replace("bpf_htons(ETH_P_IP)", "ETH_P_IP")  # host order: IPv4 frames pass


KERNEL = "import sys\nfrom labkit.teaching import live\nwith live.testbed():\n    print('up', flush=True)\n    sys.stdin.readline()\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    course = tmp / "course"
    (course / "source").mkdir(parents=True)
    shutil.copytree(ROOT / "labs" / "source" / LESSON, course / "source" / LESSON)
    shutil.copy(ROOT / "labs" / "nbgrader_config.py", course)
    roster = tmp / "students.csv"
    roster.write_text("login,name\nana,Ana Alves\nben,Ben Brown\n")
    state = tmp / "state"
    info = hub.start(roster, port=_free_port(), state=state, course=course)
    info["tmp"] = tmp
    try:
        yield info
    finally:
        if hub.hub_pid(state):
            hub.stop(state)


@pytest.fixture(scope="module")
def browser(klass):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def _page(browser, shots: Path, name: str):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1400})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):  # where it stopped, beside the hub's log
            pg.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        ctx.close()


def sign_up(pg, url: str, login: str, password: str) -> str:
    pg.goto(f"{url}/hub/signup")
    pg.fill("#username_input", login)
    pg.fill("#password_input", password)
    pg.fill("#password_confirmation_input", password)
    pg.click("#signup_submit")
    pg.wait_for_load_state()
    return pg.locator(".alert").inner_text()


def log_in(pg, url: str, login: str, password: str, next_path: str = "") -> None:
    pg.goto(f"{url}/hub/login" + (f"?next={next_path}" if next_path else ""))
    pg.fill("#username_input", login)
    pg.fill("#password_input", password)
    pg.click("#login_submit")


def write_and_run(pg, url: str, login: str, source: str) -> None:
    """Open the lesson, replace exercise 1's cell with SOURCE, run all cells."""
    pg.goto(f"{url}/user/{login}/lab/tree/{LESSON}/{LESSON}.ipynb")
    # cells sent before the kernel is connected are not run: wait for it (or for JupyterLab's
    # question which kernel to start: the notebook's own, preselected, is the one)
    idle = pg.locator("#jp-main-statusbar", has_text=re.compile(r"\|\s*Idle"))
    idle.or_(pg.locator(".jp-Dialog")).first.wait_for()
    if pg.locator(".jp-Dialog").count():
        pg.locator(".jp-Dialog button.jp-mod-accept").click()
        idle.wait_for()
    cell = pg.locator(".jp-Notebook .jp-CodeCell", has_text="%%bpf ipv4_drop")
    cell.locator(".cm-content").click()
    pg.keyboard.press("Control+a")
    pg.keyboard.insert_text(source)
    pg.get_by_role("menuitem", name="Run", exact=True).click()
    pg.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def check_and_save(pg) -> str:
    """Wait for exercise 1's check, save the notebook; the check's text."""
    check = pg.locator(".jp-Notebook .jp-CodeCell", has_text="checks.xdp(ipv4_drop").locator(
        ".jp-OutputArea-output", has_text="expected"
    )
    check.first.wait_for()
    pg.keyboard.press("Control+s")
    return "\n".join(check.all_inner_texts())


def submit(pg, inbound: Path, login: str) -> None:
    """Submit the lesson with the Submit button of nbgrader's assignment list; wait until it
    is in the exchange."""
    pg.get_by_role("menuitem", name="Nbgrader", exact=True).click()
    pg.get_by_role("menuitem", name="Assignment List").click()
    row = pg.locator("div", has=pg.get_by_text(LESSON, exact=True)).filter(has=pg.get_by_role("button", name="Submit"))
    row.last.get_by_role("button", name="Submit").click()
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(f"{login}+{LESSON}+") for p in inbound.glob("*")):
        assert time.monotonic() < deadline, f"{login}'s submission did not reach the exchange"
        time.sleep(0.2)


def wait_saved(path: Path, text: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{path} was not saved with the student's code"
        time.sleep(0.2)


def test_roster_mistakes_are_refused_before_anything_starts(tmp_path):
    roster = tmp_path / "r.csv"
    roster.write_text("# the class\nlogin,name\nana,Ana Alves\n\nben\n")
    assert hub.read_roster(roster) == [("ana", "Ana Alves"), ("ben", "ben")]
    for text, words in (
        ("ana\nana\n", "twice"),
        ("Ana\n", "lower-case"),
        ("instructor\n", "instructor's login"),
        ("# nobody\n", "names no student"),
        ("".join(f"s{i}\n" for i in range(100)), "99 slots"),
    ):
        roster.write_text(text)
        with pytest.raises(InputError, match=words):
            hub.start(roster, state=tmp_path / "state")
    assert not (tmp_path / "state").exists()


def test_status_names_who_measures_and_who_waits(tmp_path):
    lock = tmp_path / "measure.lock"
    code = "from labkit.teaching import students\nwith students.measurement_turn(log=None):\n    input()\n"
    env = dict(os.environ, LABKIT_MEASURE_LOCK=str(lock))
    procs = []
    try:
        for slot in ("s05", "s06"):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code], env=dict(env, LABKIT_STUDENT=slot), stdin=subprocess.PIPE
                )
            )
            deadline = time.monotonic() + 30
            while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
                time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not hub_status.lock_users(lock)[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        holder, waiting = hub_status.lock_users(lock)
        assert holder == f"s05 (pid {procs[0].pid})"
        assert waiting == [f"s06 (pid {procs[1].pid})"]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_two_students_submit_and_are_graded(klass, browser):
    url, tmp, state = klass["url"], klass["tmp"], Path(klass["state"])
    assert set(klass["students"]) == {"ana", "ben"} and klass["students"]["ana"]["slot"] == "s01"
    with _page(browser, tmp, "ana") as ana, _page(browser, tmp, "ben") as ben:
        assert "successful" in sign_up(ana, url, "ana", "ana-secret-7731")
        assert "successful" in sign_up(ben, url, "ben", "ben-secret-4419")
        # someone not on the roster cannot make an account
        assert "successful" not in sign_up(ana, url, "mallory", "mallory-secret-1")
        # a wrong password is refused, and nobody is logged in by it
        log_in(ana, url, "ana", "not-her-password")
        ana.get_by_text("Invalid username or password").wait_for()
        assert "/hub/login" in ana.url
        # both log in at once: the hub starts both servers together
        log_in(ana, url, "ana", "ana-secret-7731")
        log_in(ben, url, "ben", "ben-secret-4419")
        for pg, login in ((ana, "ana"), (ben, "ben")):
            pg.wait_for_url(f"{url}/user/{login}/lab**")
            pg.wait_for_selector(".jp-LabShell")
        st = hub_status.status(state)
        assert {r["login"]: r["server"] for r in st["logins"]} == {"instructor": False, "ana": True, "ben": True}

        # a student cannot reach another student's server, through the hub or its API
        r = ana.request.get(f"{url}/user/ben/api/contents/{LESSON}", max_redirects=0)
        assert r.status in (302, 403), f"ana reached ben's server: HTTP {r.status}"
        if r.status == 302:
            assert "/user/ben/" not in (r.headers.get("location") or "").split("?")[0]
        ana.goto(f"{url}/user/ben/lab")
        assert "/user/ben/lab" not in ana.url or "403" in ana.content()

        write_and_run(ana, url, "ana", RIGHT)  # both kernels work at the same time
        write_and_run(ben, url, "ben", WRONG)
        good, bad = check_and_save(ana), check_and_save(ben)
        assert re.search(r"IPv4 / UDP\s+expected XDP_DROP\s+got XDP_DROP\s+ok", good), good
        assert "WRONG" not in good
        assert re.search(r"IPv4 / UDP\s+expected XDP_DROP\s+got XDP_PASS\s+WRONG", bad), bad
        for login, code in (("ana", "bpf_htons(ETH_P_IP)"), ("ben", "h_proto == ETH_P_IP")):
            wait_saved(state / "home" / login / LESSON / f"{LESSON}.ipynb", code)
            submit(ana if login == "ana" else ben, state / "exchange" / hub.COURSE_ID / "inbound", login)
    # the formgrader is the instructor's: a hub service that students are refused
    with _page(browser, tmp, "instructor") as ins:
        formgrader = "/services/formgrader/formgrader"
        log_in(ins, url, "instructor", (state / "instructor-password").read_text().strip(), formgrader)
        ins.get_by_text("Manage Assignments").first.wait_for()
        ins.get_by_text(LESSON).first.wait_for()
        # a kernel of ben's holds a testbed; his server is stopped as the idle culler stops it
        # (DELETE /hub/api/users/ben/server), and the testbed goes with it
        kernel = subprocess.Popen(
            [sys.executable, "-c", KERNEL],
            env=dict(os.environ, LABKIT_STUDENT="s02", **{hub.MARK: str(state)}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert kernel.stdout.readline().strip() == "up"
            ben_row = next(r for r in hub_status.status(state)["logins"] if r["login"] == "ben")
            assert ben_row["server"] and len(ben_row["testbeds"]) == 1, ben_row
            xsrf = next(
                c["value"] for c in ins.context.cookies() if c["name"] == "_xsrf" and c["path"].startswith("/hub")
            )
            r = ins.request.delete(f"{url}/hub/api/users/ben/server", headers={"X-XSRFToken": xsrf})
            assert r.status in (202, 204), f"stopping ben's server: HTTP {r.status} {r.text()[:300]}"
            kernel.wait(60)  # ended by the server's stop
            deadline = time.monotonic() + 60
            while any(r["server"] or r["testbeds"] for r in hub_status.status(state)["logins"] if r["login"] == "ben"):
                assert time.monotonic() < deadline, "ben's server or testbed outlived the stop"
                time.sleep(0.5)
        finally:
            if kernel.poll() is None:
                kernel.kill()
    with _page(browser, tmp, "ana-formgrader") as ana:
        log_in(ana, url, "ana", "ana-secret-7731", "/hub/home")
        ana.wait_for_url("**/hub/home")
        r = ana.request.get(f"{url}/services/formgrader/formgrader")
        assert r.status == 403, f"a student reached the formgrader: HTTP {r.status}"
    inbound = sorted(p.name.split("+")[0] for p in (state / "exchange" / hub.COURSE_ID / "inbound").iterdir())
    assert inbound == ["ana", "ben"]

    grades = hub.grade(LESSON, state)
    rows = {r["student_id"]: r for r in csv.DictReader(grades.open())}
    assert set(rows) == {"ana", "ben"}
    # exercise 1 is worth 3 of the lesson's 5 points; exercise 2 is left as the starter by both
    assert float(rows["ana"]["score"]) == 3.0 and float(rows["ben"]["score"]) == 0.0, rows

    hub.stop(state)
    assert hub.hub_pid(state) is None
    assert hub.class_processes(state) == [], "processes of the class outlived `labkit class stop`"
    netns = Path("/run/netns")
    left = [n.name for n in netns.iterdir() if re.match(r"lk[0-9a-f]{4}-s0[0-2]", n.name)] if netns.is_dir() else []
    assert left == [], f"namespaces of the class's slots are left: {left}"
    for slot in ("s00", "s01", "s02"):
        assert not students.bpffs_dir(slot, create=False).exists() or not any(
            students.bpffs_dir(slot, create=False).iterdir()
        )
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", klass["port"])) != 0, "the proxy still listens after stop"
