"""Interactive drop-filter lab for JupyterLab: a live sender/receiver pair with the drop
filter attached, rule controls that change the BPF maps while the program runs, a button
that sends a burst, and the per-verdict counters beside the receiver's own.

    lab = DropLab()          # builds the testbed and attaches the filter
    lab.widget()             # the controls (display it in a cell)
    lab.close()              # or the Stop button; also done when the kernel exits

The testbed lives across cells, so it is not a `with` block: `close()` undoes everything,
and an exit handler does it when the kernel shuts down.

One lab is live per kernel: making a new one (running the cell again, or Run All) closes
the old one first, and the old widget says so. After `close()` every method refuses with
`LabStopped` before touching the kernel, so nothing is re-created by a stale control, and
the widget's controls are disabled with the reason beside them.

Rules are checked before the maps are touched: a refused value (a port out of range, a
prefix that is not one) leaves the active rules exactly as they were.
"""

from __future__ import annotations

import ipaddress
import time

from labkit import traffic
from labkit.dataplanes.drop_filter import PROTOCOLS, DropFilter
from labkit.errors import InputError
from labkit.testbed import topology
from labkit.testbed.livelab import LabStopped, LiveLab

HOOKS = {"XDP native": ("xdp", "native"), "XDP generic": ("xdp", "generic"), "tc ingress": ("tc", "ingress")}
NO_PROTO = "(none)"


def parse_ports(text: str) -> list[int]:
    """'9, 53' -> [9, 53]; '' -> []. Refuses anything else with what to type instead."""
    ports = []
    for part in str(text).replace(",", " ").split():
        try:
            port = int(part)
        except ValueError:
            raise InputError(
                f"port {part!r} is not a number: type a port 0..65535 (several with commas), "
                "or leave the field empty for no port rule"
            ) from None
        if not 0 <= port <= 65535:
            raise InputError(f"port {port} is out of range 0..65535")
        ports.append(port)
    return sorted(set(ports))


def parse_source(text: str) -> str | None:
    """'10.11.0.0/24' -> the prefix in canonical form; '' -> None."""
    text = str(text).strip()
    if not text:
        return None
    try:
        return str(ipaddress.IPv4Network(text, strict=False))
    except ValueError:
        raise InputError(f"source prefix {text!r} is not an IPv4 prefix like '10.11.0.0/24'") from None


class DropLab(LiveLab):
    def __init__(self, hook: str = "XDP generic", generator: str = "trafgen", sender_if=None, receiver_if=None):
        if hook not in HOOKS:
            raise InputError(f"hook {hook!r}: choose one of {list(HOOKS)}")
        self._replace_live()
        self.rules = {"drop_all": False, "proto": None, "ports": [], "source": None}
        self.topo = topology.Topology(topology.pair(sender_if=sender_if, receiver_if=receiver_if))
        self.topo.__enter__()
        try:
            self.filter = DropFilter()
            self.snd, self.rcv = self.topo.iface("snd"), self.topo.iface("rcv")
            self.gen = traffic.generator(generator, self.snd)
            self.attachment = None
            self.hook = None
            self._attach(hook)
        except BaseException:
            self.topo.close()
            raise
        self._went_live(self.topo.run.prefix)

    # ---- hook
    def _attach(self, hook: str) -> None:
        kind, mode = HOOKS[hook]
        self.attachment = (
            self.filter.attach_xdp(self.rcv, mode) if kind == "xdp" else self.filter.attach_tc(self.rcv, mode)
        ).attach()
        self.hook = hook

    def set_hook(self, hook: str) -> None:
        """Move the filter to HOOK ('XDP native', 'XDP generic', 'tc ingress'). If the new
        hook is refused, the filter goes back where it was and the error is raised."""
        if hook not in HOOKS:
            raise InputError(f"hook {hook!r}: choose one of {list(HOOKS)}")
        with self.lock:
            self.check_open()
            if hook == self.hook:
                return
            old = self.hook
            if self.attachment is not None:
                self.attachment.detach()
                self.attachment = None
            try:
                self._attach(hook)
            except BaseException:
                self._attach(old)
                raise

    # ---- rules
    def set_rules(self, drop_all: bool | None = None, proto=None, ports=None, source=None) -> dict:
        """Change the rules (arguments left None keep their value; proto NO_PROTO or '' and
        ports [] or '' and source '' remove that rule). Every value is checked first: a
        refused one raises InputError and the filter keeps the rules it had."""
        new = dict(self.rules)
        if drop_all is not None:
            new["drop_all"] = bool(drop_all)
        if proto is not None:
            new["proto"] = None if proto in ("", NO_PROTO) else DropFilter._proto(proto)
        if ports is not None:
            new["ports"] = parse_ports(ports) if isinstance(ports, str) else parse_ports(" ".join(map(str, ports)))
        if source is not None:
            new["source"] = parse_source(source)
        with self.lock:
            self.check_open()
            if new != self.rules:
                f = self.filter
                f.clear()
                if new["drop_all"]:
                    f.drop_all()
                if new["proto"] is not None:
                    f.drop_proto(new["proto"])
                for p in new["ports"]:
                    f.drop_port(p)
                if new["source"]:
                    f.drop_src(new["source"])
                self.rules = new
            return self.filter.rules()

    def active_rules(self) -> dict:
        with self.lock:
            self.check_open()
            return self.filter.rules()

    # ---- traffic and counters
    def send(self, count: int = 10_000, dport: int = 9, proto: str = "udp", size: int = 64):
        if not 1 <= int(count) <= 100_000_000:
            raise InputError(f"burst of {count} packets: choose 1..100000000")
        if not 0 <= int(dport) <= 65535:
            raise InputError(f"destination port {dport} is out of range 0..65535")
        self.check_open()
        spec = traffic.TrafficSpec.between(
            self.snd, self.rcv, count=int(count), dport=int(dport), size=size, proto=proto
        )
        return self.gen.send(spec)

    def counter_rows(self) -> list[dict]:
        """The filter's per-verdict counters and the receiver's link counter."""
        with self.lock:
            self.check_open()
            rows = [{"verdict": k, **v} for k, v in self.filter.counters().items()]
            st = self.rcv.stats()
        rows.append({"verdict": "receiver link rx", "packets": st["rx_packets"], "bytes": st["rx_bytes"]})
        return rows

    def counters(self):
        import pandas as pd

        return pd.DataFrame(self.counter_rows())

    # ---- teardown
    def _teardown(self) -> None:
        try:
            if self.attachment is not None:
                self.attachment.detach()
            self.gen.close()
            self.filter.close()
        finally:
            self.topo.close()

    def widget(self):
        """The controls: hook, rules, a burst, and the live counters."""
        return DropLabWidget(self).box


class DropLabWidget:
    """The drop lab's controls. Text fields (port, source) apply on Enter or when they lose
    focus; a refused value is put back to the active rule and the reason is shown in red.
    The counters refresh every `interval` seconds while the lab is live, and the live plot
    below them (labkit.widgets.rateplot) shows the sender's and receiver's per-second rates
    and the filter's verdicts per second over the last minute."""

    def __init__(self, lab: DropLab, interval: float = 1.0):
        from labkit.dataplanes.drop_filter import VERDICTS
        from labkit.measure.watch import Target
        from labkit.widgets.controls import Ticker, holding, widgets
        from labkit.widgets.rateplot import RatePlot

        w = widgets()
        self.lab, self.interval = lab, interval
        self._busy = False  # set while the widget itself puts a field back
        r = lab.rules
        self.hook = w.Dropdown(options=list(HOOKS), value=lab.hook, description="hook").add_class("lk-hook")
        self.drop_all = w.Checkbox(value=r["drop_all"], description="drop everything").add_class("lk-drop-all")
        self.proto = w.Dropdown(
            options=[NO_PROTO] + sorted(PROTOCOLS),
            description="drop proto",
            value=next((k for k, v in PROTOCOLS.items() if v == r["proto"]), NO_PROTO),
        ).add_class("lk-proto")
        self.port = w.Text(
            value=", ".join(map(str, r["ports"])),
            placeholder="e.g. 9 (Enter applies)",
            description="drop port",
            continuous_update=False,
        ).add_class("lk-port")
        self.src = w.Text(
            value=r["source"] or "",
            placeholder="10.11.0.0/24 (Enter applies)",
            description="drop source",
            continuous_update=False,
        ).add_class("lk-src")
        self.count = w.IntSlider(value=10_000, min=1_000, max=1_000_000, step=1_000, description="burst")
        self.count.add_class("lk-count")
        self.dport = w.BoundedIntText(value=9, min=0, max=65535, description="to port").add_class("lk-dport")
        self.send = w.Button(description="send burst", button_style="primary").add_class("lk-send")
        self.stop = w.Button(description="stop lab", button_style="danger").add_class("lk-stop")
        self.message = w.HTML().add_class("lk-message")
        self.state = w.HTML().add_class("lk-state")
        self.table = w.HTML().add_class("lk-counters")
        self.controls = [self.hook, self.drop_all, self.proto, self.port, self.src, self.count, self.dport]
        self.controls += [self.send, self.stop]
        self.plot = RatePlot(
            [Target(i.netns, i.name) for i in (lab.snd, lab.rcv)],
            names={f"counters[{i}]": f"filter: {v}" for i, v in enumerate(VERDICTS)},
            guard=lambda: holding(lab),
            interval=interval,
            title="drop lab",
        )
        self.box = w.VBox(
            [
                w.HBox([self.hook, self.drop_all]),
                w.HBox([self.proto, self.port, self.src]),
                w.HBox([self.count, self.dport, self.send, self.stop]),
                self.message,
                self.state,
                self.table,
                self.plot.widget,
            ]
        ).add_class("lk-droplab")

        self.hook.observe(self._on_hook, names="value")
        self.drop_all.observe(lambda ch: self._rule(ch, drop_all=ch["new"]), names="value")
        self.proto.observe(lambda ch: self._rule(ch, proto=ch["new"]), names="value")
        self.port.observe(lambda ch: self._rule(ch, ports=ch["new"]), names="value")
        self.src.observe(lambda ch: self._rule(ch, source=ch["new"]), names="value")
        self.send.on_click(self._on_send)
        self.stop.on_click(self._on_stop)
        lab.on_close(self._on_closed)

        note = (
            f"lab live (run {lab.prefix}); it closed the lab that was live before (run {lab.replaced})"
            if lab.replaced
            else f"lab live (run {lab.prefix})"
        )
        self.say(note)
        self.refresh()
        self.ticker = Ticker(self.refresh, interval, name="droplab-counters")
        if lab.closed:  # closed while the widget was being built
            self._on_closed(lab.stop_reason)

    # ---- display
    def say(self, text: str, ok: bool = True) -> None:
        from labkit.widgets.controls import status_html

        self.message.value = status_html(text, ok)

    def refresh(self) -> bool:
        """Show the lab's counters and rules now; False once the lab is stopped."""
        from labkit.widgets.controls import describe, table_html

        lab = self.lab
        if lab.closed:
            return False
        try:
            rows = lab.counter_rows()
            rules = lab.active_rules()
        except LabStopped:
            return False
        except Exception as exc:
            self.state.value = f"<i>counters unavailable: {describe(exc)}</i>"
            return True
        self.state.value = (
            f"run <b>{lab.prefix}</b> &nbsp; hook: <b>{lab.hook}</b> &nbsp; active rules: "
            f"<code class='lk-rules'>{rules}</code> &nbsp; counters at {time.strftime('%H:%M:%S')}"
        )
        self.table.value = table_html(rows, "no counters")
        return True

    # ---- actions
    def _put_back(self, control, value) -> None:
        self._busy = True
        try:
            control.value = value
        finally:
            self._busy = False

    def _on_hook(self, change) -> None:
        from labkit.widgets.controls import describe

        if self._busy:
            return
        try:
            self.lab.set_hook(change["new"])
            self.say(f"filter moved to {change['new']}; the rules stay as they were")
        except Exception as exc:
            if not self.lab.closed:
                self._put_back(self.hook, self.lab.hook)
            self.say(f"refused: {describe(exc)} — the filter stays on {self.lab.hook}", ok=False)
        self.refresh()

    def _rule(self, change, **kw) -> None:
        from labkit.widgets.controls import describe

        if self._busy:
            return
        try:
            rules = self.lab.set_rules(**kw)
            self.say(f"rules applied while the program runs (no reload): {rules}")
        except Exception as exc:
            r = self.lab.rules
            field, back = {
                "drop_all": (self.drop_all, r["drop_all"]),
                "proto": (self.proto, next((k for k, v in PROTOCOLS.items() if v == r["proto"]), NO_PROTO)),
                "ports": (self.port, ", ".join(map(str, r["ports"]))),
                "source": (self.src, r["source"] or ""),
            }[next(iter(kw))]
            if not self.lab.closed:
                self._put_back(field, back)
            self.say(f"refused: {describe(exc)} — the active rules are unchanged", ok=False)
        self.refresh()

    def _on_send(self, _) -> None:
        from labkit.widgets.controls import describe

        self.send.disabled = True
        try:
            o = self.lab.send(self.count.value, self.dport.value)
            self.say(f"sent {o.packets} packets to port {self.dport.value} at {o.pps / 1e6:.2f} Mpps")
        except Exception as exc:
            self.say(f"send failed: {describe(exc)}", ok=False)
        finally:
            self.send.disabled = self.lab.closed
        self.refresh()

    def _on_stop(self, _) -> None:
        from labkit.widgets.controls import describe

        try:
            self.lab.close("stopped with the stop lab button")
        except Exception as exc:  # the lab is closed all the same; say what could not be undone
            self.say(f"stopping met an error: {describe(exc)}; `labkit clean` removes what is left", ok=False)

    def _on_closed(self, reason: str) -> None:
        from labkit.widgets.controls import lab_stopped

        lab_stopped(
            reason,
            name="lab",
            controls=self.controls,
            show=lambda why: self.say(why, ok=False),
            tickers=[t for t in (getattr(self, "ticker", None), self.plot) if t is not None],
        )
        self.state.value = f"<i>run {self.lab.prefix} is closed; the counters below are its last</i>"
