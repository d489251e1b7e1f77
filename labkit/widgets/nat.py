"""Notebook widgets for the eBPF NAT: an editor for static mappings and the SNAT port range,
and a live view of the flow table, both working on a running `labkit.dataplanes.nat.Nat` through its
maps. ipywidgets is imported only when a widget is built.

    from labkit.widgets import nat as nat_widgets
    nat_widgets.mapping_editor(nat)     # add / remove mappings, set the port range
    nat_widgets.flow_view(nat)          # flow table, refreshed every second while shown

Every change goes through the control plane, so invalid input shows its error message in
the widget and leaves the maps unchanged.
"""
from __future__ import annotations

import html
import threading

from labkit.errors import LabkitError


def _widgets():
    try:
        import ipywidgets
    except ImportError:
        raise LabkitError("ipywidgets is not installed in this environment: `sudo make setup` installs it") from None
    return ipywidgets


def _table_html(rows: list[dict], empty: str) -> str:
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    cols = list(rows[0])
    head = "".join(f"<th style='text-align:right;padding:0 8px'>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td style='text-align:right;padding:0 8px'>{html.escape(str(r[c]))}</td>"
                                     for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def mappings_html(nat) -> str:
    rows = [{"inside": m.inside, "outside": m.outside, "out pkts": m.out_packets, "out bytes": m.out_bytes,
             "in pkts": m.in_packets, "in bytes": m.in_bytes} for m in nat.mappings()]
    return _table_html(rows, "no static mappings")


def flows_html(nat, limit: int = 50) -> str:
    flows = nat.flows()
    rows = [{"proto": f.proto, "inside": f"{f.inside}:{f.inside_port}", "remote": f"{f.remote}:{f.remote_port}",
             "as": f"{f.nat_address}:{f.nat_port}", "out pkts": f.out_packets, "in pkts": f.in_packets,
             "out bytes": f.out_bytes, "in bytes": f.in_bytes, "idle s": f"{f.idle_s:.1f}"}
            for f in sorted(flows, key=lambda f: f.idle_s)[:limit]]
    t = nat.flow_table()
    head = (f"<b>{t['entries']}</b> flows of {t['capacity']}"
            + (" — <b style='color:#b00'>table full: the oldest flows are evicted</b>" if t["full"] else "")
            + f"; {t['created']} created, {t['evicted_or_stale']} evicted or expired"
            + f"; drops: no free port {t['no_port_drops']}, table full {t['table_full_drops']}")
    more = f"<br><i>showing the {limit} most recently active</i>" if len(flows) > limit else ""
    return head + "<br>" + _table_html(rows, "no flows yet") + more


def mapping_editor(nat):
    """A form to add and remove static 1:1 mappings and set the SNAT port range."""
    w = _widgets()
    inside = w.Text(placeholder="inside, e.g. 10.20.1.2", description="inside")
    outside = w.Text(placeholder="outside, e.g. 198.51.100.10", description="outside")
    add, remove = w.Button(description="Add mapping", button_style="success"), w.Button(description="Remove")
    lo, hi = nat.port_range
    first = w.BoundedIntText(value=lo, min=0, max=70000, description="ports from")
    last = w.BoundedIntText(value=hi, min=0, max=70000, description="to")
    set_ports = w.Button(description="Set port range")
    message = w.HTML()
    table = w.HTML(mappings_html(nat))

    def done(text: str, ok: bool = True):
        color = "#070" if ok else "#b00"
        message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"
        table.value = mappings_html(nat)

    def on_add(_):
        try:
            m = nat.add_mapping(inside.value.strip(), outside.value.strip())
            done(f"mapped {m.inside} <-> {m.outside}")
        except LabkitError as exc:
            done(str(exc), False)

    def on_remove(_):
        try:
            addr = inside.value.strip() or outside.value.strip()
            nat.remove_mapping(addr)
            done(f"removed the mapping of {addr}")
        except LabkitError as exc:
            done(str(exc), False)

    def on_ports(_):
        try:
            nat.set_port_range(int(first.value), int(last.value))
            done(f"new flows get ports {first.value}-{last.value}")
        except LabkitError as exc:
            done(str(exc), False)

    add.on_click(on_add)
    remove.on_click(on_remove)
    set_ports.on_click(on_ports)
    return w.VBox([w.HBox([inside, outside, add, remove]), w.HBox([first, last, set_ports]), message, table])


class FlowView:
    """The flow table as HTML, refreshed every `interval` seconds by a background thread
    until `stop()` (or the Stop button)."""

    def __init__(self, nat, interval: float = 1.0, limit: int = 50):
        w = _widgets()
        self.nat, self.interval, self.limit = nat, interval, limit
        self.html = w.HTML(flows_html(nat, limit))
        self.button = w.Button(description="Stop live view")
        self.refresh_button = w.Button(description="Refresh")
        self.button.on_click(lambda _: self.stop())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.widget = w.VBox([w.HBox([self.refresh_button, self.button]), self.html])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="nat-flow-view")
        self._thread.start()

    def refresh(self) -> None:
        try:
            self.html.value = flows_html(self.nat, self.limit)
        except Exception as exc:  # the NAT was closed: stop quietly
            self.html.value = f"<i>flow table unavailable: {html.escape(str(exc))}</i>"
            self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        self.button.disabled = True

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def flow_view(nat, interval: float = 1.0, limit: int = 50) -> FlowView:
    """A live view of NAT's flow table (display it; it refreshes itself)."""
    return FlowView(nat, interval, limit)
