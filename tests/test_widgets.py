"""The live labs' objects, in-process and for real (namespaces, XDP, trafgen): one lab per
kernel (a new one closes the old), nothing works or touches the kernel after stop, a refused
value leaves the active rules as they were. The widgets are built too, and driven through
their controls' values as the browser would set them."""
from __future__ import annotations

import os
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
    assert second.replaced == first.prefix and drop.live_lab() is second
    assert_gone(first.prefix)
    assert namespaces(second.prefix) == [f"{second.prefix}-rcv", f"{second.prefix}-snd"]
    assert ui.children  # the old widget still renders, disabled
    o = second.send(2000, 9)
    assert o.packets == 2000
    assert second.filter.total() >= 2000


def test_stopped_drop_lab_refuses_everything_and_creates_nothing(drop_lab):
    from labkit.widgets.drop import DropLabWidget, LabStopped

    lab = drop_lab()
    ui = DropLabWidget(lab)
    prefix = lab.prefix
    ui.stop.click()
    assert lab.closed
    assert_gone(prefix)
    assert all(c.disabled for c in ui.controls)
    assert "stopped" in ui.message.value and "run the cell again" in ui.message.value
    for act in (lambda: lab.set_hook("tc ingress"), lambda: lab.send(1000), lambda: lab.set_rules(ports="9"),
                lambda: lab.counter_rows()):
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
    # the counters table follows
    lab.send(1000, 7)
    ui.refresh()
    assert "drop_src" in ui.table.value


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
