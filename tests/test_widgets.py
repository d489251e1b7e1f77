"""The live labs' objects, in-process and for real (namespaces, XDP, trafgen): one lab per
kernel (a new one closes the old), nothing works or touches the kernel after stop, a refused
value leaves the active rules as they were. The widgets are built too, and driven through
their controls' values as the browser would set them."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from labkit.errors import InputError
from labkit.testbed import runs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")


def namespaces(prefix: str) -> list[str]:
    d = Path("/run/netns")
    return sorted(p.name for p in d.iterdir() if p.name.startswith(prefix)) if d.is_dir() else []


def assert_gone(prefix: str) -> None:
    assert namespaces(prefix) == [], f"namespaces of run {prefix} left behind"
    assert not (runs.REGISTRY_DIR / f"{prefix}.json").exists(), f"registry file of run {prefix} left behind"


@pytest.fixture
def drop_lab():
    from labkit.widgets.drop import DropLab

    labs = []

    def make(**kw):
        labs.append(DropLab(**kw))
        return labs[-1]

    yield make
    for lab in labs:
        lab.close()
        assert_gone(lab.prefix)


def test_new_drop_lab_closes_the_old_one(drop_lab):
    from labkit.widgets import drop

    first = drop_lab()
    assert namespaces(first.prefix) == [f"{first.prefix}-rcv", f"{first.prefix}-snd"]
    box = first.widget()
    ui = box  # keep the widget alive, as the notebook's output does
    second = drop_lab()
    assert first.closed and "replaced" in first.stop_reason
    assert second.replaced == first.prefix and drop.DropLab.live() is second
    assert_gone(first.prefix)
    assert namespaces(second.prefix) == [f"{second.prefix}-rcv", f"{second.prefix}-snd"]
    assert ui.children  # the old widget still renders, disabled
    o = second.send(2000, 9)
    assert o.packets == 2000
    assert second.filter.total() >= 2000


def test_stopped_drop_lab_refuses_everything_and_creates_nothing(drop_lab):
    from labkit.testbed.livelab import LabStopped
    from labkit.widgets.drop import DropLabWidget

    lab = drop_lab()
    ui = DropLabWidget(lab)
    prefix = lab.prefix
    ui.stop.click()
    assert lab.closed
    assert_gone(prefix)
    assert all(c.disabled for c in ui.controls)
    assert "stopped" in ui.message.value and "run the cell again" in ui.message.value
    for act in (
        lambda: lab.set_hook("tc ingress"),
        lambda: lab.send(1000),
        lambda: lab.set_rules(ports="9"),
        lambda: lab.counter_rows(),
    ):
        with pytest.raises(LabStopped):
            act()
    # a stale control (say, a second view of the widget) changed after stop
    ui.hook.value = "tc ingress"
    assert "stopped" in ui.message.value
    ui.send.click()
    assert "send failed" in ui.message.value and "stopped" in ui.message.value
    assert_gone(prefix)  # the hook change re-created no namespace


def test_refused_rule_leaves_the_active_rules(drop_lab):
    from labkit.widgets.drop import DropLabWidget

    lab = drop_lab()
    ui = DropLabWidget(lab)
    ui.port.value = "9"
    assert lab.active_rules()["ports"] == [9]
    o = lab.send(2000, 9)
    assert lab.filter.counters()["drop_port"]["packets"] == o.packets
    before = lab.active_rules()
    for bad in ("70000", "nine", "-1"):
        ui.port.value = bad
        assert "refused" in ui.message.value and "unchanged" in ui.message.value
        assert lab.active_rules() == before
        assert ui.port.value == "9"  # the field shows the active rule again
    ui.src.value = "10.11.0.0/33"
    assert "refused" in ui.message.value and lab.active_rules() == before
    with pytest.raises(InputError):
        lab.set_rules(ports=[9, 65536])
    assert lab.active_rules() == before
    ui.src.value = "10.11.0.0/24"
    assert lab.active_rules()["sources"] == ["10.11.0.0/24"]
    ui.port.value = ""
    assert lab.active_rules()["ports"] == []
    # the counters table follows by itself (its refresh thread), no action needed
    o = lab.send(1000, 7)
    deadline = time.monotonic() + 60
    while not re.search(rf"drop_src</td><td[^>]*>{o.packets}<", ui.table.value):
        assert time.monotonic() < deadline, f"the counters did not refresh: {ui.table.value}"
        time.sleep(0.2)


def test_refused_hook_keeps_the_filter_where_it_was(drop_lab):
    from labkit.widgets.drop import DropLabWidget

    lab = drop_lab()
    ui = DropLabWidget(lab)
    ui.hook.value = "tc ingress"
    assert lab.hook == "tc ingress" and "moved" in ui.message.value
    ui.hook.value = "XDP native"
    assert lab.hook == "XDP native"
    with pytest.raises(InputError):
        lab.set_hook("XDP offload")
    assert lab.hook == "XDP native" and lab.attachment.attached
    o = lab.send(1000, 9)
    assert lab.filter.total() >= o.packets


# ---------------------------------------------------------------- the NAT lab
@pytest.fixture
def nat_lab():
    from labkit.experiments.nat.live_nat import LiveNat

    labs = []

    def make(**kw):
        labs.append(LiveNat(**kw))
        return labs[-1]

    yield make
    for lab in labs:
        lab.close()
        assert_gone(lab.prefix)


def test_new_nat_lab_closes_the_old_one_and_its_widgets(nat_lab):
    from labkit.experiments.nat import live_nat as live
    from labkit.widgets.nat import FlowView, MappingEditor

    first = nat_lab(clients=1)
    editor, view = MappingEditor(first.nat), FlowView(first.nat)
    second = nat_lab(clients=1)
    assert first.closed and second.replaced == first.prefix and live.LiveNat.live() is second
    assert_gone(first.prefix)
    assert all(c.disabled for c in editor.controls) and "replaced" in editor.message.value
    assert view.refresh_button.disabled and "replaced" in view.html.value
    editor.add.click()  # a stale button: refused in the widget, nothing touched
    assert "stopped" in editor.message.value
    assert_gone(first.prefix)
    second.traffic()
    view2 = FlowView(second.nat)
    assert second.nat.table_use()["entries"] >= 1 and "10.20.1.2" in view2.html.value
    view2.stop()


def test_nat_lab_after_stop_refuses_and_creates_nothing(nat_lab):
    from labkit.testbed.livelab import LabStopped
    from labkit.widgets.nat import MappingEditor

    lab = nat_lab(clients=1)
    editor = MappingEditor(lab.nat)
    editor.stop.click()
    assert lab.closed
    assert_gone(lab.prefix)
    assert all(c.disabled for c in editor.controls)
    assert "stopped with the stop lab button" in editor.message.value
    with pytest.raises(LabStopped):
        lab.traffic()
    editor.inside.value, editor.outside.value = "10.20.1.2", "198.51.100.10"
    editor.add.click()
    editor.set_ports.click()
    assert "refused" in editor.message.value and "stopped" in editor.message.value
    assert_gone(lab.prefix)


def test_refused_mapping_leaves_the_table(nat_lab):
    from labkit.widgets.nat import MappingEditor

    lab = nat_lab(clients=2)
    editor = MappingEditor(lab.nat)
    editor.inside.value, editor.outside.value = "10.20.1.2", "198.51.100.10"
    editor.add.click()
    assert "mapped 10.20.1.2" in editor.message.value
    table = editor.table.value.split("<br>")[0]
    before = [(m.inside, m.outside) for m in lab.nat.mappings()]
    assert before == [("10.20.1.2", "198.51.100.10")]
    for inside, outside in (("10.20.2.2", "198.51.100.10"), ("10.20.1.2", "198.51.100.11"), ("10.20.2.2", "nonsense")):
        editor.inside.value, editor.outside.value = inside, outside
        editor.add.click()
        assert "refused" in editor.message.value and "unchanged" in editor.message.value
        assert [(m.inside, m.outside) for m in lab.nat.mappings()] == before
        assert editor.table.value.split("<br>")[0] == table
    editor.first.value, editor.last.value = 30000, 20000
    editor.set_ports.click()
    assert "refused" in editor.message.value and lab.nat.port_range == (20000, 29999)


def test_nat_lab_shows_each_path_and_the_flows_state(nat_lab):
    """The NAT lab runs the XDP fast path over the tc NAT: after traffic, the flow view
    shows each flow's state, age and expiry, and the packets of each path by outcome, the
    fast path's among them (established flows are translated at XDP)."""
    from labkit.widgets import nat as nat_widgets

    live = nat_lab()
    assert live.fast is not None
    live.traffic()
    live.traffic()  # the second exchange meets established flows
    flows = nat_widgets.flows_html(live.nat)
    assert "state" in flows and "expires in s" in flows and "active" in flows
    paths = nat_widgets.paths_html(live.nat)
    assert "XDP fast path" in paths and "tc NAT (slow path)" in paths
    fast = {k: v["packets"] for k, v in live.fast.stats().items() if v["packets"]}
    assert fast, "the fast path handled no packet"
    assert any(k in paths for k in fast)


# ---------------------------------------------------------------- the live rate plot
def lab_threads(*widgets_) -> list:
    """The background threads of these widgets (refreshes and plots) still alive."""
    out = []
    for ui in widgets_:
        for t in (getattr(ui, "ticker", None), getattr(ui, "plot", None)):
            ticker = getattr(t, "ticker", t)
            if ticker is not None and ticker.thread.is_alive():
                out.append(ticker.thread.name)
    return out


def wait_for(cond, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_drop_lab_plot_follows_real_traffic_and_stops_with_the_lab(drop_lab):
    """The plot samples as `labkit watch` does: after a burst the receiver's plotted rx rate
    and the filter's pass rate are above 0, a port rule shows as drop_port per second; a
    stopped lab leaves no refresh or plot thread and every control disabled."""
    import threading

    from labkit.widgets.drop import DropLabWidget

    lab = drop_lab()
    ui = DropLabWidget(lab)
    rcv = lab.rcv.name.split("-", 1)[1]
    assert ui.plot.widget in ui.box.children and ui.plot.running
    wait_for(lambda: ui.plot.draws >= 1, "the plot never drew")
    assert ui.plot.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    o = lab.send(300_000, 7)  # long enough to span at least one whole sampling second
    wait_for(
        lambda: max(ui.plot.series(f"{rcv} rx"), default=0) > 0,
        f"the plotted rx rate stayed 0 after {o.packets} packets: {ui.plot.shown()}",
    )
    wait_for(lambda: max(ui.plot.series("filter: pass"), default=0) > 0, "the filter's pass rate is not plotted")
    assert f"{rcv} rx" in ui.plot.shown() and "rates at" in ui.plot.text.value
    ui.port.value = "9"
    lab.send(300_000, 9)
    wait_for(lambda: max(ui.plot.series("filter: drop_port"), default=0) > 0, "drop_port per second not plotted")

    ui.stop.click()
    assert lab.closed and not ui.plot.running
    assert lab_threads(ui) == [], "a refresh or plot thread outlived the lab"
    assert not [t for t in threading.enumerate() if t.name in ("lk-rateplot", "droplab-counters")]
    assert all(c.disabled for c in ui.controls) and "stopped" in ui.message.value
    assert "live plot stopped" in ui.plot.text.value  # the last image stays, and says it is the last
    draws = ui.plot.draws
    ui.plot.tick()  # a stale tick samples nothing from a closed lab
    assert ui.plot.draws == draws


def test_rerun_stops_the_old_widgets_plot(drop_lab):
    from labkit.widgets.drop import DropLabWidget

    first = drop_lab()
    old = DropLabWidget(first)
    second = drop_lab()
    assert first.closed and lab_threads(old) == [] and all(c.disabled for c in old.controls)
    new = DropLabWidget(second)
    assert new.plot.running
    new.plot.stop()
    new.plot.stop()  # harmless twice
    assert "lk-rateplot" not in lab_threads(new)


def test_nat_lab_plot_shows_the_nat_ports_and_stops(nat_lab):
    from labkit.widgets.nat import FlowView, MappingEditor

    live = nat_lab(clients=1)
    editor, view = MappingEditor(live.nat), FlowView(live.nat)
    assert view.plot is not None and view.plot.widget in view.widget.children
    outside = live.lab.outside.name.split("-", 1)[1]

    def seen():
        live.traffic()
        return max(view.plot.series(f"{outside} tx"), default=0) > 0 and any(
            n.startswith("fast path: ") for n in view.plot.shown()
        )

    wait_for(seen, f"the NAT's outside port or its fast path never showed a rate: {view.plot.shown()}", seconds=90)
    # the fast path's programs on the inside and outside ports share one map: its outcomes once
    assert not [n for n in view.plot.shown() if n.startswith("xdp_nat")], view.plot.shown()
    view.stop()  # the live view's stop button stops the plot too
    assert lab_threads(view) == [] and view.refresh_button.disabled is False
    editor.stop.click()
    assert lab_threads(editor, view) == []
    assert all(c.disabled for c in editor.controls) and view.refresh_button.disabled


def test_widgets_built_over_a_closed_lab_show_it_stopped_and_start_no_thread(drop_lab, nat_lab):
    """A lab closed before its widget is built (say, by a rerun elsewhere): the widget is
    built without an exception, shows the lab stopped, every control disabled, and neither
    a refresh nor the live plot leaves a thread; the plot samples nothing."""
    import threading

    from labkit.widgets.drop import DropLabWidget
    from labkit.widgets.nat import _rate_plot

    lab = drop_lab()
    lab.close()
    ui = DropLabWidget(lab)
    assert all(c.disabled for c in ui.controls) and "stopped" in ui.message.value
    assert ui.plot.sampler is None and not ui.plot.running and "already stopped" in ui.plot.text.value
    assert ui.plot.image.value[:8] == b"\x89PNG\r\n\x1a\n"  # the empty axes, not a broken image
    assert lab_threads(ui) == []
    ui.plot.tick()  # a stale tick: nothing to sample, no error
    assert_gone(lab.prefix)

    live = nat_lab(clients=1)
    live.close()
    plot = _rate_plot(live, 1.0)  # the NAT view's plot, built as the lab closes under it
    assert plot.sampler is None and not plot.running and plot.ticker is None
    plot.stop()  # harmless
    assert not [t for t in threading.enumerate() if t.name in ("lk-rateplot", "droplab-counters")]


def test_ticker_stop_says_when_a_stuck_refresh_outlives_it():
    """A refresh that does not return (a netlink call stuck in the kernel) keeps its thread
    past stop(): stop() says so (a warning, False) instead of claiming it is gone; once the
    call returns the thread ends without calling again."""
    import threading

    from labkit.widgets.controls import Ticker

    entered, release, calls = threading.Event(), threading.Event(), []

    def stuck():
        calls.append(1)
        entered.set()
        release.wait()
        return True

    t = Ticker(stuck, 0.01, name="lk-test-stuck")
    assert entered.wait(30), "the ticker never called its function"
    with pytest.warns(RuntimeWarning, match="lk-test-stuck is still in a refresh"):
        assert t.stop(timeout=0.05) is False
    release.set()
    t.thread.join(30)
    assert not t.thread.is_alive() and calls == [1]
    assert t.stop() is True  # stopping again: harmless, and now true
