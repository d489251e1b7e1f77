"""The reports as a reader sees them: a batch's index.html and each report opened in a real
headless browser (Debian's chromium), offline (every host name fails to resolve). Every
image must have loaded with a size, every link to a file or an anchor must resolve, and
a screenshot of each page is saved beside the test's own reports (a temporary folder:
the checkout's reports/ is never read or written by the suite).

How a page is inspected with nothing but the chromium command line: a copy of it, with a
<base> pointing at the original's directory (so relative links resolve as in the
original) and a small script that, once the page has loaded, writes what it sees (images
with their natural size, links, anchors) into the DOM, is loaded with --dump-dom."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import needs_root

from labkit.reporting import batch as report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]  # offline: nothing resolves

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"
)

PROBE = """<script>
window.addEventListener('load', function () {
  var out = {images: [], links: [], missing_anchors: [], scripts: []};
  for (const i of document.images)
    out.images.push({src: i.src.slice(0, 40), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                     shown_w: i.getBoundingClientRect().width});
  for (const a of document.querySelectorAll('a[href]')) {
    var raw = a.getAttribute('href');
    if (raw.startsWith('#')) {
      // as a browser finds a fragment's target: the raw fragment first, then percent-decoded
      var ids = [raw.slice(1)];
      try { ids.push(decodeURIComponent(raw.slice(1))); } catch (e) {}
      if (ids[0] && !ids.some(id => document.getElementById(id) || document.getElementsByName(id).length))
        out.missing_anchors.push(raw);
    } else out.links.push(a.href);
  }
  for (const s of document.querySelectorAll('script[src]')) out.scripts.push(s.src);
  var p = document.createElement('pre'); p.id = 'labkit-probe'; p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
});
</script>"""


def _chromium(args, tmp: Path, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def inspect(page: Path, tmp: Path) -> dict:
    """What the browser saw on PAGE: images (loaded, natural size), links, missing anchors."""
    text = page.read_text()
    base = f'<base href="{page.parent.resolve().as_uri()}/">'
    text = re.sub(r"(<head[^>]*>)", r"\1" + base, text, count=1, flags=re.I)
    text = re.sub(r"</body>", PROBE + "</body>", text, count=1, flags=re.I)
    probe = tmp / f"probe-{page.stem}.html"
    probe.write_text(text)
    r = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp)
    m = re.search(r'<pre id="labkit-probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"chromium did not load {page}: {r.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(m.group(1)))


def screenshot(page: Path, tmp: Path, name: str) -> Path:
    out = page.parent / "screenshots" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    _chromium(["--window-size=1280,2400", f"--screenshot={out}", page.resolve().as_uri()], tmp)
    assert out.exists() and out.stat().st_size > 10_000, f"no screenshot of {page}"
    return out


def check_page(page: Path, tmp: Path, min_images: int = 0) -> list[Path]:
    """Assert what a reader needs of PAGE; return the local pages it links to."""
    seen = inspect(page, tmp)
    assert len(seen["images"]) >= min_images, f"{page.name}: {len(seen['images'])} images, expected {min_images}+"
    for img in seen["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown_w"] > 0, f"{page.name}: {img}"
        assert img["src"].startswith("data:image/"), f"{page.name}: image not embedded: {img['src']}"
    assert not seen["missing_anchors"], f"{page.name}: anchors without a target: {seen['missing_anchors']}"
    assert not [s for s in seen["scripts"] if s.startswith("http")], f"{page.name}: scripts from the network"
    local = []
    for href in seen["links"]:
        u = urlparse(href)
        if u.scheme == "file":
            target = Path(unquote(u.path))
            assert target.exists(), f"{page.name}: link to {target.name} does not resolve"
            local.append(target)
        else:
            assert u.scheme in ("http", "https", "mailto"), f"{page.name}: odd link {href}"
    return local


@needs_root
def test_a_fresh_batch_reads_well_in_a_browser(tmp_path):
    """A batch as `labkit report --smoke` makes it (the drop experiment and the comparison),
    in this test's own reports and data folders, checked offline: the index and every
    report it links to. It makes its own runs, so it holds on a fresh clone too."""
    out, data = tmp_path / "reports", tmp_path / "data"
    done = report.run_all(
        ["01-xdp-drop", "04-comparison"], {}, out, data, smoke=True, progress=False, log=lambda *a: None
    )
    assert all(r.ok for r in done), [(r.name, r.error) for r in done]
    drop, comparison = done
    assert drop.runs and all(Path(p).is_relative_to(data) for p in drop.runs), (
        "the batch's tables are in its data folder"
    )
    index = out / "index.html"
    linked = check_page(index, tmp_path, min_images=2)  # program costs + the drop experiment
    assert {r.html.resolve() for r in done} <= {p.resolve() for p in linked}
    pages = sorted({p for p in linked if p.suffix == ".html"})
    for p in pages:
        check_page(p, tmp_path, min_images=2)
        screenshot(p, tmp_path, p.stem)
    screenshot(index, tmp_path, "index")
