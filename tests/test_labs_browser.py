"""The live labs as a user meets them: JupyterLab in headless Chromium (Debian's, driven by
Playwright), a real kernel, real namespaces, programs and traffic.

The server runs on a free localhost port with a token, in a temporary root holding one
small notebook per lab. Each is made of the real notebook's `parameters` cell, a cell
setting `interactive = True` (as `papermill -p interactive True` would), a cell printing the
kernel's pid, and the real notebook's lab cell, so the test runs the same calls the notebook
makes. Everything the server, the kernel and the browser write goes to temporary folders
(LABKIT_DATA_DIR too). On failure a screenshot of the page is kept beside the test's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from labkit.experiments.nat.testbed import SERVER
from labkit.testbed import runs

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
JUPYTER = Path(sys.executable).parent / "jupyter"
STUDENT_CONFIG = ROOT / "labs" / "student-config"
TIMEOUT_MS = 180_000  # building a lab compiles BPF on a shared 2-core machine: be generous

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -r requirements.txt)")


# ---------------------------------------------------------------- the notebooks
def _cells(notebook: str) -> tuple[str, str, dict]:
    """The parameters cell, the lab cell (the one that builds the live lab) and the
    kernelspec of NOTEBOOK."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    params = lab = None
    for c in nb["cells"]:
        src = "".join(c["source"])
        if "parameters" in c.get("metadata", {}).get("tags", []):
            params = src
        elif c["cell_type"] == "code" and ("DropLab(" in src or "LiveNat(" in src):
            lab = src
    assert params and lab, f"{notebook}: no parameters cell or no lab cell found"
    return params, lab, nb["metadata"]["kernelspec"]


def _write_notebook(path: Path, source_notebook: str) -> None:
    params, lab, kernelspec = _cells(source_notebook)
    sources = [params, "interactive = True", "import os\nprint('kernel pid', os.getpid())", lab]
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": s} for s in sources
    ]
    cells[0]["metadata"]["tags"] = ["parameters"]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": kernelspec}}
    path.write_text(json.dumps(nb))


# ---------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """JupyterLab on a free port of 127.0.0.1 with a token, serving TMP/root. The live labs'
    notebooks go there unless STUDENT_VIEW: then the caller puts released lessons there, and
    the server runs as a student's does (labs/README.md: labs/student-config, and nothing
    on the command line that the set-up's settings should do themselves)."""

    def __init__(self, tmp: Path, student_view: bool = False):
        self.root = tmp / "root"
        self.root.mkdir()
        self.port, self.token = _free_port(), os.urandom(16).hex()
        env = dict(
            os.environ,
            LABKIT_DATA_DIR=str(tmp / "data"),
            LABKIT_REPORTS_DIR=str(tmp / "reports"),
            JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
            JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
            JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
            IPYTHONDIR=str(tmp / "ipython"),
            MPLCONFIGDIR=str(tmp / "mpl"),
        )
        args = []
        if student_view:
            env["JUPYTER_CONFIG_PATH"] = str(STUDENT_CONFIG)
        else:
            _write_notebook(self.root / "drop.ipynb", "01-xdp-drop.ipynb")
            _write_notebook(self.root / "nat.ipynb", "03-ebpf-nat.ipynb")
            args = ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self.log = open(tmp / "jupyter.log", "w")
        self.proc = subprocess.Popen(
            [
                str(JUPYTER),
                "lab",
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                f"--ServerApp.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
                "--ServerApp.port_retries=0",
                *args,
            ],
            cwd=self.root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                self.api("GET", "status")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"JupyterLab did not start: {(tmp / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def api(self, method: str, path: str):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/{'' if path.startswith('/') else 'api/'}{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernel(self, notebook: str) -> None:
        """What the Kernel menu's Shut Down does: the server asks the kernel to exit."""
        for s in self.api("GET", "sessions"):
            if s["path"].endswith(notebook):
                self.api("DELETE", f"kernels/{s['kernel']['id']}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server shuts its kernels down
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labs-browser")
    srv = Server(tmp)
    srv.tmp = tmp
    yield srv
    srv.stop()


@contextlib.contextmanager
def _browser_page(shots: Path, name: str):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 1600})
        pg.set_default_timeout(TIMEOUT_MS)
        try:
            yield pg
        finally:
            # the page as it was at the end (on a failure: where it stopped), beside the server's log
            with contextlib.suppress(Exception):
                pg.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            browser.close()


@pytest.fixture
def page(server, request):
    with _browser_page(server.tmp, request.node.name) as pg:
        yield pg


# ---------------------------------------------------------------- what the kernel holds
def namespaces(prefix: str) -> list[str]:
    d = Path("/run/netns")
    return sorted(p.name for p in d.iterdir() if p.name.startswith(prefix + "-")) if d.is_dir() else []


def bpf_prog_ids(pid: int) -> set[int]:
    """IDs of the BPF programs process PID holds open (from its fds' fdinfo)."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            m = re.search(r"^prog_id:\s*(\d+)", fd.read_text(), re.M)
            if m:
                ids.add(int(m.group(1)))
    return ids


def bpf_prog_exists(prog_id: int) -> bool:
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = libbpf.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd >= 0:
        os.close(fd)
        return True
    return False


def assert_nothing_left(prefixes, prog_ids) -> None:
    for prefix in prefixes:
        assert namespaces(prefix) == [], f"run {prefix} left namespaces"
        assert not (runs.REGISTRY_DIR / f"{prefix}.json").exists(), f"run {prefix} left its registry file"
    still = sorted(i for i in prog_ids if bpf_prog_exists(i))
    assert not still, f"BPF programs {still} of the kernel are still loaded"


def wait_gone(pid: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"the kernel (pid {pid}) did not exit after shut-down"
        time.sleep(0.2)


# ---------------------------------------------------------------- driving JupyterLab
def open_and_run_all(page, server, notebook: str, lab_selector: str) -> int:
    page.goto(server.url(f"lab/tree/{notebook}"))
    page.wait_for_selector(".jp-Notebook .jp-Cell")  # cells run once the kernel is up: JupyterLab queues them
    # JupyterLab may ask which kernel to start: the notebook's own (preselected) is the one
    with contextlib.suppress(sync_api.TimeoutError):
        page.locator(".jp-Dialog", has_text="Select Kernel").wait_for(timeout=15_000)
        page.locator(".jp-Dialog button.jp-mod-accept").click()
        page.locator(".jp-Dialog").wait_for(state="detached")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_selector(lab_selector)
    out = page.locator(".jp-OutputArea-output", has_text="kernel pid").first.inner_text()
    return int(re.search(r"kernel pid (\d+)", out).group(1))


def rerun_last_cell(page) -> None:
    cell = page.locator(".jp-Notebook .jp-CodeCell").last
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")


def text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def wait_text(page, selector: str, pattern: str) -> str:
    """Wait until SELECTOR's text matches the regular expression PATTERN; return the text."""
    page.wait_for_function(
        "([s, p]) => { const e = document.querySelector(s); return e && new RegExp(p).test(e.innerText); }",
        arg=[selector, pattern],
    )
    return text(page, selector)


def click_until(page, button: str, selector: str, pattern: str) -> str:
    """Click BUTTON until SELECTOR's text matches PATTERN (at most three clicks). ipywidgets
    sends a click at once but holds a text field's new value behind that field's previous
    message until the kernel is idle, so on a busy kernel a click can overtake what was typed
    just before it, as a quick user's can; the user clicks again."""
    for attempt in range(3):
        page.locator(button).click()
        try:
            page.wait_for_function(
                "([s, p]) => { const e = document.querySelector(s); return e && new RegExp(p).test(e.innerText); }",
                arg=[selector, pattern],
                timeout=20_000 if attempt < 2 else TIMEOUT_MS,
            )
            return text(page, selector)
        except sync_api.TimeoutError:
            if attempt == 2:
                raise
    return text(page, selector)


def counters(page) -> dict:
    """The drop lab's counter table: verdict -> packets."""
    rows = {}
    for tr in page.locator(".lk-counters tbody tr").all():
        cells = tr.locator("td").all_inner_texts()
        rows[cells[0]] = int(cells[1])
    return rows


def plot_image(page, scope: str, old: str | None = None) -> str:
    """The src of the live plot under SCOPE once it shows a decoded, non-empty image (other
    than OLD, when given: a new drawing; an unchanged drawing is not sent again)."""
    img = f"{scope} .lk-rateplot img"
    page.wait_for_function(
        "([s, old]) => { const i = document.querySelector(s); return i && i.complete"
        " && i.naturalWidth > 100 && i.getAttribute('src') !== old; }",
        arg=[img, old],
    )
    return page.locator(img).first.get_attribute("src")


def prefix_of(page, selector: str) -> str:
    return re.search(r"run (lk[0-9a-f]{4})", text(page, selector)).group(1)


# ---------------------------------------------------------------- the tests
def test_drop_lab_in_jupyterlab(server, page):
    pid = open_and_run_all(page, server, "drop.ipynb", ".lk-droplab .lk-send button, .lk-droplab button.lk-send")
    wait_text(page, ".lk-state", r"run lk[0-9a-f]{4}")
    first = prefix_of(page, ".lk-state")
    assert namespaces(first) == [f"{first}-rcv", f"{first}-snd"]
    progs = bpf_prog_ids(pid)
    assert progs, "the kernel holds no BPF program while the lab is live"
    for sel in (".lk-hook select", ".lk-port input", ".lk-src input", "button.lk-send", "button.lk-stop"):
        assert page.locator(sel).is_enabled(), f"{sel} is not enabled in a live lab"

    # the live plot draws; a burst shows in the counters, and in the plot (a new drawing) and its
    # rates (the receiver's rx, the filter's pass)
    drawn = plot_image(page, ".lk-droplab")
    before = counters(page)
    page.locator("button.lk-send").click()
    wait_text(page, ".lk-droplab .lk-rates", r"rcv0 rx [0-9.]+k?/s.*filter: pass [0-9.]+k?/s")
    plot_image(page, ".lk-droplab", old=drawn)
    page.locator(".lk-droplab").screenshot(path=str(server.tmp / "drop-lab-live.png"))  # to look at
    wait_text(page, ".lk-message", r"sent \d+ packets")
    page.wait_for_function(
        "(n) => { const t = document.querySelector('.lk-counters'); return t &&"
        " /pass\\s+(\\d+)/.test(t.innerText) && +t.innerText.match(/pass\\s+(\\d+)/)[1] >= n; }",
        arg=before.get("pass", 0) + 10_000,
    )
    # the counters refresh by themselves: their time stamp moves with no action
    stamp = re.search(r"counters at (\S+)", text(page, ".lk-state")).group(1)
    page.wait_for_function(
        "(s) => !document.querySelector('.lk-state').innerText.includes('counters at ' + s)", arg=stamp
    )

    # a port rule applies on Enter; a refused value leaves it and says why
    page.locator(".lk-port input").fill("9")
    page.locator(".lk-port input").press("Enter")
    wait_text(page, ".lk-rules", r"'ports': \[9\]")
    page.locator(".lk-port input").fill("70000")
    page.locator(".lk-port input").press("Enter")
    msg = wait_text(page, ".lk-message", "refused")
    assert "70000" in msg and "unchanged" in msg
    assert page.locator(".lk-message .lk-status-error").count() == 1
    assert "'ports': [9]" in text(page, ".lk-rules")
    page.wait_for_function("() => document.querySelector('.lk-port input').value === '9'")
    # a bad prefix, applied when the field loses focus
    page.locator(".lk-src input").fill("10.11.0.0/33")
    page.locator(".lk-port input").click()
    wait_text(page, ".lk-message", r"refused: source prefix '10\.11\.0\.0/33'")
    assert "'sources': []" in text(page, ".lk-rules")

    # the rule drops: a burst to port 9 raises drop_port
    dropped = counters(page).get("drop_port", 0)
    page.locator("button.lk-send").click()
    page.wait_for_function(
        "(n) => { const m = document.querySelector('.lk-counters').innerText.match(/drop_port\\s+(\\d+)/);"
        " return m && +m[1] >= n; }",
        arg=dropped + 10_000,
    )

    # the hook moves while traffic runs
    page.locator(".lk-hook select").select_option("tc ingress")
    wait_text(page, ".lk-message", "filter moved to tc ingress")
    wait_text(page, ".lk-state", "hook: tc ingress")

    # the cell again: the old lab is closed first, the new one works
    rerun_last_cell(page)
    wait_text(page, ".lk-message", f"closed the lab that was live before \\(run {first}\\)")
    second = prefix_of(page, ".lk-message")
    assert second != first
    assert_nothing_left([first], set())
    assert namespaces(second) == [f"{second}-rcv", f"{second}-snd"]
    page.locator("button.lk-send").click()
    wait_text(page, ".lk-message", r"sent \d+ packets")

    # stop: every control off, saying why; the kernel state is gone at once
    page.locator("button.lk-stop").click()
    wait_text(page, ".lk-message", "stopped with the stop lab button")
    for sel in (
        ".lk-hook select",
        ".lk-drop-all input",
        ".lk-proto select",
        ".lk-port input",
        ".lk-src input",
        ".lk-dport input",
        "button.lk-send",
        "button.lk-stop",
    ):
        page.wait_for_function("(s) => document.querySelector(s).disabled", arg=sel)
    page.wait_for_selector(".lk-count [disabled]", state="attached")  # the burst slider
    assert "run the cell again" in page.locator("button.lk-send").get_attribute("title")
    assert_nothing_left([first, second], set())
    # the stopped lab's plot keeps its last image, says so, and draws no more
    wait_text(page, ".lk-droplab .lk-rates", "live plot stopped at")
    plot_image(page, ".lk-droplab")
    stopped_src = page.locator(".lk-droplab .lk-rateplot img").last.get_attribute("src")
    page.wait_for_timeout(2500)
    assert page.locator(".lk-droplab .lk-rateplot img").last.get_attribute("src") == stopped_src

    server.shutdown_kernel("drop.ipynb")
    wait_gone(pid)
    assert_nothing_left([first, second], progs)


def test_nat_lab_in_jupyterlab(server, page):
    pid = open_and_run_all(page, server, "nat.ipynb", ".lk-natlab button.lk-add")
    wait_text(page, ".lk-message", r"NAT lab live \(run lk[0-9a-f]{4}\)")
    first = prefix_of(page, ".lk-message")
    assert f"{first}-nat" in namespaces(first)
    progs = bpf_prog_ids(pid)
    assert progs, "the kernel holds no BPF program while the lab is live"

    # the notebook's traffic (sent after the views are shown) makes flows; the view refreshes by itself
    wait_text(page, ".lk-flows", r"[1-9]\d* flows? of \d+")
    flows = text(page, ".lk-flows")
    assert "10.20.1.2" in flows
    stamp = re.search(r"as of (\S+)", flows).group(1)
    page.wait_for_function("(s) => !document.querySelector('.lk-flows').innerText.includes('as of ' + s)", arg=stamp)
    # the live plot of the NAT host's ports draws; pings from a client (as from a shell beside
    # the notebook) show in its rates and a new drawing
    drawn = plot_image(page, ".lk-flowview")
    subprocess.run(
        ["ip", "netns", "exec", f"{first}-c1", "ping", "-c", "8", "-i", "0.25", "-W", "2", SERVER],
        capture_output=True,
        timeout=60,
    )
    wait_text(page, ".lk-flowview .lk-rates", r"rates at \S+: .*(rx|tx) [1-9][0-9.]*k?/s")
    plot_image(page, ".lk-flowview", old=drawn)
    page.locator(".lk-flowview").screenshot(path=str(server.tmp / "nat-lab-live.png"))

    # a mapping, then refused ones: the table stays as it was, the reason in red
    page.locator(".lk-inside input").fill("10.20.1.2")
    page.locator(".lk-outside input").fill("198.51.100.10")
    page.locator("button.lk-add").click()
    wait_text(page, ".lk-message", r"mapped 10\.20\.1\.2 <-> 198\.51\.100\.10")
    wait_text(page, ".lk-mappings", "198.51.100.10")
    table = page.locator(".lk-mappings table").inner_text()
    page.locator(".lk-inside input").fill("10.20.2.2")
    page.locator("button.lk-add").click()  # the same outside address again
    msg = wait_text(page, ".lk-message", "refused")
    assert "198.51.100.10" in msg and "unchanged" in msg
    assert page.locator(".lk-mappings table").inner_text().splitlines()[:2] == table.splitlines()[:2]
    page.locator(".lk-outside input").fill("not an address")
    click_until(page, "button.lk-add", ".lk-message", "refused.*not an address")
    assert page.locator(".lk-mappings tbody tr").count() == 1

    # the cell again: the old lab closes first
    rerun_last_cell(page)
    wait_text(page, ".lk-message", f"closed the lab that was live before \\(run {first}\\)")
    second = prefix_of(page, ".lk-message")
    assert second != first
    assert_nothing_left([first], set())
    wait_text(page, ".lk-flows", r"\d+ flows? of \d+")

    # stop: every control off, saying why, nothing left
    page.locator("button.lk-stop").click()
    wait_text(page, ".lk-message", "stopped with the stop lab button")
    for sel in (
        ".lk-inside input",
        ".lk-outside input",
        "button.lk-add",
        "button.lk-remove",
        ".lk-first input",
        ".lk-last input",
        "button.lk-set-ports",
        "button.lk-stop",
        "button.lk-refresh",
        "button.lk-stop-view",
    ):
        page.wait_for_function("(s) => document.querySelector(s).disabled", arg=sel)
    wait_text(page, ".lk-flows", "stopped with the stop lab button")
    assert_nothing_left([first, second], set())

    # once more, and this time the kernel is shut down with the lab live: its exit handler cleans up
    rerun_last_cell(page)
    wait_text(page, ".lk-message", r"NAT lab live \(run (?!" + second + r")lk[0-9a-f]{4}\)")
    third = prefix_of(page, ".lk-message")
    assert f"{third}-nat" in namespaces(third)
    progs |= bpf_prog_ids(pid)
    server.shutdown_kernel("nat.ipynb")
    wait_gone(pid)
    assert_nothing_left([first, second, third], progs)


# ---------------------------------------------------------------- the course as a student sees it
@pytest.fixture(scope="module")
def student_server(tmp_path_factory):
    """A student's JupyterLab (labs/README.md) serving lesson 2 as nbgrader releases it."""
    tmp = tmp_path_factory.mktemp("student-view")
    shutil.copytree(ROOT / "labs" / "source" / "02-first-xdp", tmp / "course" / "source" / "02-first-xdp")
    shutil.copy(ROOT / "labs" / "nbgrader_config.py", tmp / "course")
    env = {**os.environ, "PATH": f"{JUPYTER.parent}:{os.environ.get('PATH', '')}"}
    cp = subprocess.run(
        [sys.executable, "-m", "nbgrader", "generate_assignment", "02-first-xdp", "--no-db", "--force"],
        cwd=tmp / "course",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    srv = Server(tmp, student_view=True)
    shutil.copy(tmp / "course" / "release" / "02-first-xdp" / "02-first-xdp.ipynb", srv.root)
    srv.tmp = tmp
    yield srv
    srv.stop()


def test_the_student_view_has_no_instructor_ui_no_news_and_opens_unmodified(student_server, request):
    """No nbgrader menu, Validate button or Create Assignment panel, no formgrader behind
    the server, no "Jupyter news?" pop-up, and a lesson that opens (kernel started) without
    becoming "modified"."""
    with pytest.raises(urllib.error.HTTPError, match="404"):
        student_server.api("GET", "/formgrader")
    with _browser_page(student_server.tmp, request.node.name) as page:
        page.goto(student_server.url("lab/tree/02-first-xdp.ipynb"))
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        deadline = time.monotonic() + 120
        while not [s for s in student_server.api("GET", "sessions") if s["kernel"]["execution_state"] == "idle"]:
            assert time.monotonic() < deadline, "the lesson's kernel did not start"
            time.sleep(0.5)
        page.wait_for_timeout(5_000)  # time for a news toast, and for the kernel's info to reach the notebook
        _assert_student_view(page)


def _assert_student_view(page) -> None:
    menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
    assert "Run" in menus and "Nbgrader" not in menus, menus
    tabs = page.locator(".lm-TabBar-tab").evaluate_all("ts => ts.map(t => t.title || t.innerText)")
    assert not [t for t in tabs if "Create Assignment" in t], tabs
    assert page.get_by_text("Validate", exact=True).count() == 0
    assert page.get_by_text(re.compile("Jupyter news", re.I)).count() == 0
    assert page.locator(".jp-Notebook .jp-Cell").count() > 5
    assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, "the lesson shows as modified just by opening it"


LESSON_02 = ROOT / "labs" / "source" / "02-first-xdp" / "02-first-xdp.ipynb"


def _exercise_1() -> tuple[str, str, str]:
    """Lesson 2's Exercise 1 from the instructor's version: the answer cell with its solution
    in place (markers dropped), the same answer with IPv6 dropped too (it compiles, and one
    visible case, IPv6 / UDP, gets the wrong verdict), and the check cell's hint."""
    cells = {
        c["metadata"].get("nbgrader", {}).get("grade_id"): "".join(c["source"])
        for c in json.loads(LESSON_02.read_text())["cells"]
    }
    right = "\n".join(line for line in cells["l02_ipv4"].splitlines() if "SOLUTION" not in line)
    drop_ipv4 = "if (eth->h_proto == bpf_htons(ETH_P_IP))"
    assert drop_ipv4 in right, "lesson 2's Exercise 1 solution changed: update this test's wrong answer"
    wrong = right.replace(drop_ipv4, drop_ipv4[:-1] + " || eth->h_proto == bpf_htons(ETH_P_IPV6))")
    hint = re.search(r'hint="([^"]+)"', cells["l02_ipv4_test"]).group(1)
    return right, wrong, hint


def _type_into(page, cell, source: str) -> None:
    """Replace CELL's text with SOURCE, as a paste would (no auto-indent or bracket closing)."""
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(source)
    page.keyboard.press("Escape")  # back to command mode, the cell still selected


def _save(page, server, notebook: str) -> dict:
    """Save NOTEBOOK as the user does (Ctrl+S); its graded and answer cells on disk, by nbgrader id."""
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')")
    cells = json.loads((server.root / notebook).read_text())["cells"]
    return {c["metadata"]["nbgrader"]["grade_id"]: c for c in cells if "nbgrader" in c["metadata"]}


def test_a_wrong_answer_shows_its_verdict_once_and_fails_the_cell(student_server, request):
    """Released lesson 2, Exercise 1, in a student's JupyterLab: a compiling answer with one
    wrong verdict makes the check cell show the table and the hint once, with no traceback,
    as an error output, saved as the `CheckFailed` error nbgrader grades on; the right answer
    in the same cell passes the check with no error."""
    right, wrong, hint = _exercise_1()
    lesson = "answers/02-first-xdp.ipynb"  # a copy of its own: the lesson beside it stays as released
    (student_server.root / "answers").mkdir()
    shutil.copy(student_server.root / "02-first-xdp.ipynb", student_server.root / lesson)
    with _browser_page(student_server.tmp, request.node.name) as page:
        page.goto(student_server.url(f"lab/tree/{lesson}") + "&reset")  # this lesson alone, no tabs restored
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        assert page.locator(".jp-NotebookPanel").count() == 1
        answer = page.locator(".jp-Notebook .jp-CodeCell", has_text="%%bpf ipv4_drop")
        check = page.locator(".jp-Notebook .jp-CodeCell", has_text="checks.xdp(ipv4_drop")
        _type_into(page, answer, wrong)
        check.locator(".jp-InputPrompt").click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Above Selected Cell", exact=True).click()
        check.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
        check.locator(".jp-OutputArea-output", has_text="1 of 4 wrong").wait_for()

        out = check.locator(".jp-OutputArea-output")
        assert out.count() == 1, out.all_inner_texts()
        shown = out.inner_text()
        assert re.search(r"IPv6 / UDP\s+expected XDP_PASS\s+got XDP_DROP\s+WRONG", shown), shown
        for once in ("check: 4 frames through xdp_main", "IPv6 / UDP", "WRONG", f"hint: {hint}", "1 of 4 wrong"):
            assert shown.count(once) == 1, f"{once!r} is shown {shown.count(once)} times:\n{shown}"
        for crash in ("Traceback", "checks.py", "CheckFailed", 'File "'):
            assert crash not in shown, shown
        assert out.get_attribute("data-mime-type") == "application/vnd.jupyter.stderr"

        saved = _save(page, student_server, lesson)
        outputs = saved["l02_ipv4_test"]["outputs"]
        assert [(o["output_type"], o.get("ename")) for o in outputs] == [("error", "CheckFailed")], outputs
        assert "Traceback" not in "\n".join(outputs[0]["traceback"])
        assert "".join(saved["l02_ipv4"]["source"]).strip() == wrong.strip(), (
            "the answer cell does not hold what was typed"
        )

        _type_into(page, answer, right)
        page.keyboard.press("Control+Enter")  # the answer cell, then the check
        check.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
        check.locator(".jp-OutputArea-output", has_text="all 4 right").wait_for()
        assert check.locator(".jp-OutputArea-output").count() == 1
        assert check.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
        outputs = _save(page, student_server, lesson)["l02_ipv4_test"]["outputs"]
        assert [o["output_type"] for o in outputs] == ["stream"], outputs
