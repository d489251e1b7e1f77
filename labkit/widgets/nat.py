"""Notebook widgets for the eBPF NAT: an editor for static mappings and the SNAT port range,
and a live view of the flow table, both working on a running `labkit.dataplanes.nat.Nat` through its
maps. ipywidgets is imported only when a widget is built.

    from labkit.widgets import nat as nat_widgets
    nat_widgets.mapping_editor(nat)     # add / remove mappings, set the port range
    nat_widgets.flow_view(nat)          # flow table and a live rate plot, refreshed every second

Every change goes through the control plane, so invalid input shows its error message in
the widget and leaves the maps unchanged. When the NAT comes from a `LiveNat` (the
notebook's lab), the editor has a stop button, every read and write holds the lab's lock,
and once the lab is stopped or replaced (its cell run again) every control is disabled and
says why: nothing reads a closed NAT's maps or touches the kernel again.
"""

from __future__ import annotations

import html
import time
from contextlib import contextmanager

from labkit.experiments.nat.live_nat import live_for
from labkit.testbed.livelab import LabStopped
from labkit.widgets.controls import Ticker, describe, lab_stopped, status_html
from labkit.widgets.controls import table_html as _table_html
from labkit.widgets.controls import widgets as _widgets


@contextmanager
def _using(nat):
    """Hold the lab's lock while NAT's maps are used, and refuse once the lab is closed."""
    live = live_for(nat)
    if live is None:
        yield
        return
    with live.lock:
        live.check_open()
        yield


def mappings_html(nat) -> str:
    rows = [
        {
            "inside": m.inside,
            "outside": m.outside,
            "out pkts": m.out_packets,
            "out bytes": m.out_bytes,
            "in pkts": m.in_packets,
            "in bytes": m.in_bytes,
        }
        for m in nat.mappings()
    ]
    return _table_html(rows, "no static mappings")


def paths_html(nat) -> str:
    """Which path handled the packets: the XDP fast path's outcomes (when the lab runs it)
    beside the tc NAT's, each with its packet count; outcomes that never happened are left out."""
    live = live_for(nat)
    paths = [("XDP fast path", live.fast.stats())] if live is not None and getattr(live, "fast", None) else []
    paths.append(("tc NAT (slow path)" if paths else "tc NAT", nat.stats()))
    rows = [
        {"path": name, "outcome": outcome, "packets": c["packets"]}
        for name, stats in paths
        for outcome, c in stats.items()
        if c["packets"]
    ]
    return _table_html(rows, "no packets yet")


def flows_html(nat, limit: int = 50) -> str:
    flows = nat.flows()
    rows = [
        {
            "proto": f.proto,
            "inside": f"{f.inside}:{f.inside_port}",
            "remote": f"{f.remote}:{f.remote_port}",
            "as": f"{f.nat_address}:{f.nat_port}",
            "state": f.state,
            "out pkts": f.out_packets,
            "in pkts": f.in_packets,
            "out bytes": f.out_bytes,
            "in bytes": f.in_bytes,
            "age s": f"{f.age_s:.1f}",
            "idle s": f"{f.idle_s:.1f}",
            "expires in s": f"{max(0.0, f.timeout_s - f.idle_s):.0f}",
        }
        for f in sorted(flows, key=lambda f: f.idle_s)[:limit]
    ]
    t = nat.table_use()
    head = (
        f"<b>{t['entries']}</b> flows of {t['capacity']}"
        + (" — <b style='color:#b00'>table full: the oldest flows are evicted</b>" if t["full"] else "")
        + f"; {t['created']} created, {t['evicted_or_stale']} evicted or expired"
        + f"; drops: no free port {t['no_port_drops']}, table full {t['table_full_drops']}"
    )
    more = f"<br><i>showing the {limit} most recently active</i>" if len(flows) > limit else ""
    return head + "<br>" + _table_html(rows, "no flows yet") + more


class MappingEditor:
    """A form to add and remove static 1:1 mappings and set the SNAT port range, above the
    mapping table (its counters refresh every `interval` seconds while the lab is live)."""

    def __init__(self, nat, interval: float = 1.0):
        w = _widgets()
        self.nat, self.interval, self.live = nat, interval, live_for(nat)
        self.inside = w.Text(placeholder="inside, e.g. 10.20.1.2", description="inside").add_class("lk-inside")
        self.outside = w.Text(placeholder="outside, e.g. 198.51.100.10", description="outside").add_class("lk-outside")
        self.add = w.Button(description="Add mapping", button_style="success").add_class("lk-add")
        self.remove = w.Button(description="Remove").add_class("lk-remove")
        lo, hi = nat.port_range
        self.first = w.BoundedIntText(value=lo, min=0, max=70000, description="ports from").add_class("lk-first")
        self.last = w.BoundedIntText(value=hi, min=0, max=70000, description="to").add_class("lk-last")
        self.set_ports = w.Button(description="Set port range").add_class("lk-set-ports")
        self.stop = w.Button(description="stop lab", button_style="danger").add_class("lk-stop")
        self.message = w.HTML().add_class("lk-message")
        self.table = w.HTML().add_class("lk-mappings")
        self.controls = [self.inside, self.outside, self.add, self.remove, self.first, self.last, self.set_ports]
        row3 = [self.set_ports]
        if self.live is not None:
            self.controls.append(self.stop)
            row3.append(self.stop)
            self.stop.on_click(self._on_stop)
        self.widget = w.VBox(
            [
                w.HBox([self.inside, self.outside, self.add, self.remove]),
                w.HBox([self.first, self.last, *row3]),
                self.message,
                self.table,
            ]
        ).add_class("lk-natlab")
        self.add.on_click(self._on_add)
        self.remove.on_click(self._on_remove)
        self.set_ports.on_click(self._on_ports)
        self.ticker = None
        if self.live is not None:
            note = f"NAT lab live (run {self.live.prefix})"
            if self.live.replaced:
                note += f"; it closed the lab that was live before (run {self.live.replaced})"
            self.say(note)
            self.live.on_close(self._on_closed)
            if self.live.closed:
                self._on_closed(self.live.stop_reason)
        self.refresh()
        if not (self.live is not None and self.live.closed):
            self.ticker = Ticker(self.refresh, interval, name="nat-mappings")

    def say(self, text: str, ok: bool = True) -> None:
        self.message.value = status_html(text, ok)

    def refresh(self) -> bool:
        """Show the mappings now; False once the lab is stopped."""
        try:
            with _using(self.nat):
                self.table.value = (
                    mappings_html(self.nat) + f"<br><small>counters at {time.strftime('%H:%M:%S')}</small>"
                )
        except LabStopped:
            return False
        except Exception as exc:
            self.table.value = f"<i>mapping table unavailable: {html.escape(describe(exc))}</i>"
        return True

    def _act(self, what, done: str | None = None) -> None:
        try:
            with _using(self.nat):
                result = what()
            self.say(done.format(result=result) if done else str(result))
        except Exception as exc:
            self.say(f"refused: {describe(exc)} — the mappings are unchanged", ok=False)
        self.refresh()

    def _on_add(self, _):
        def add():
            m = self.nat.add_mapping(self.inside.value.strip(), self.outside.value.strip())
            return f"mapped {m.inside} <-> {m.outside}"

        self._act(add)

    def _on_remove(self, _):
        def remove():
            addr = self.inside.value.strip() or self.outside.value.strip()
            self.nat.remove_mapping(addr)
            return f"removed the mapping of {addr}"

        self._act(remove)

    def _on_ports(self, _):
        def ports():
            self.nat.set_port_range(int(self.first.value), int(self.last.value))
            return f"new flows get ports {self.first.value}-{self.last.value}"

        self._act(ports)

    def _on_stop(self, _) -> None:
        try:
            self.live.close("stopped with the stop lab button")
        except Exception as exc:  # the lab is closed all the same; say what could not be undone
            self.say(f"stopping met an error: {describe(exc)}; `labkit clean` removes what is left", ok=False)

    def _on_closed(self, reason: str) -> None:
        lab_stopped(
            reason,
            name="NAT lab",
            controls=self.controls,
            show=lambda why: self.say(why, ok=False),
            tickers=[self.ticker] if self.ticker is not None else [],
        )

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def mapping_editor(nat) -> MappingEditor:
    """A form to add and remove static 1:1 mappings and set the SNAT port range (display it)."""
    return MappingEditor(nat)


class FlowView:
    """The flow table as HTML, refreshed every `interval` seconds by a background thread
    until `stop()` (or the Stop button), or until the lab it shows is closed. For a lab's
    NAT, a live plot (labkit.widgets.rateplot) follows: the NAT host's ports' per-second
    rates and the XDP fast path's outcomes per second over the last minute."""

    def __init__(self, nat, interval: float = 1.0, limit: int = 50):
        w = _widgets()
        self.nat, self.interval, self.limit, self.live = nat, interval, limit, live_for(nat)
        self.html = w.HTML().add_class("lk-flows")
        self.button = w.Button(description="Stop live view").add_class("lk-stop-view")
        self.refresh_button = w.Button(description="Refresh").add_class("lk-refresh")
        self.button.on_click(lambda _: self.stop())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.plot = self.ticker = None
        if self.live is not None and not self.live.closed:
            self.plot = _rate_plot(self.live, interval)
        self.widget = w.VBox(
            [w.HBox([self.refresh_button, self.button]), self.html]
            + ([self.plot.widget] if self.plot is not None else [])
        ).add_class("lk-flowview")
        self.refresh()
        if self.live is not None:
            self.live.on_close(self._on_closed)
        if not (self.live is not None and self.live.closed):
            self.ticker = Ticker(self.refresh, interval, name="nat-flow-view")
        if self.live is not None and self.live.closed:
            self._on_closed(self.live.stop_reason)

    def refresh(self) -> bool:
        """Show the flow table now; False once the lab is stopped."""
        try:
            with _using(self.nat):
                self.html.value = (
                    flows_html(self.nat, self.limit)
                    + "<br><b>Packets by path and outcome</b><br>"
                    + paths_html(self.nat)
                    + f"<br><small>as of {time.strftime('%H:%M:%S')}</small>"
                )
        except LabStopped:
            return False
        except Exception as exc:
            self.html.value = f"<i>flow table unavailable: {html.escape(describe(exc))}</i>"
        return True

    def _tickers(self) -> list:
        return [t for t in (self.ticker, self.plot) if t is not None]

    def stop(self) -> None:
        """Stop the live view (the flow table and the plot); Refresh still updates the table."""
        for t in self._tickers():
            t.stop()
        self.button.disabled = True
        self.button.tooltip = "the live view is stopped: Refresh still updates it"

    def _on_closed(self, reason: str) -> None:
        lab_stopped(
            reason,
            name="NAT lab",
            controls=[self.button, self.refresh_button],
            tickers=self._tickers(),
            show=lambda why: setattr(self.html, "value", status_html(why, ok=False) + "<br>" + self.html.value),
            gone="the flow table is gone",
        )

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _rate_plot(live, interval: float):
    """The NAT lab's live plot: the NAT host's inside and outside ports."""
    from labkit.dataplanes.xdp_nat import OUTCOMES
    from labkit.measure.watch import Target
    from labkit.widgets.controls import holding
    from labkit.widgets.rateplot import RatePlot

    lab = live.lab
    ports = [lab.inside(i) for i in range(1, lab.clients + 1)] + [lab.outside]
    return RatePlot(
        [Target(p.netns, p.name) for p in ports],
        interval=interval,
        title="NAT host's ports",
        names={f"xdp_stats[{i}]": f"fast path: {o}" for i, o in enumerate(OUTCOMES)},
        guard=lambda: holding(live),
    )


def flow_view(nat, interval: float = 1.0, limit: int = 50) -> FlowView:
    """A live view of NAT's flow table (display it; it refreshes itself)."""
    return FlowView(nat, interval, limit)
