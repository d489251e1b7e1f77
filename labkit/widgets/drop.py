"""Interactive drop-filter lab for JupyterLab: a live sender/receiver pair with the drop
filter attached, rule controls that change the BPF maps while the program runs, a button
that sends a burst, and the per-verdict counters beside the receiver's own.

    lab = DropLab()          # builds the testbed and attaches the filter
    lab.widget()             # the controls (display it in a cell)
    lab.close()              # or the Stop button; also done when the kernel exits

The testbed lives across cells, so it is not a `with` block: `close()` undoes everything,
and an exit handler does it when the kernel shuts down.
"""
from __future__ import annotations

import atexit

from labkit import traffic
from labkit.testbed import topology
from labkit.dataplanes.drop_filter import PROTOCOLS, DropFilter

HOOKS = {"XDP native": ("xdp", "native"), "XDP generic": ("xdp", "generic"), "tc ingress": ("tc", "ingress")}


class DropLab:
    def __init__(self, hook: str = "XDP generic", generator: str = "trafgen", sender_if=None, receiver_if=None):
        self.topo = topology.Topology(topology.pair(sender_if=sender_if, receiver_if=receiver_if))
        self.topo.__enter__()
        try:
            self.filter = DropFilter()
            self.snd, self.rcv = self.topo.iface("snd"), self.topo.iface("rcv")
            self.gen = traffic.generator(generator, self.snd)
            self.attachment = None
            self.set_hook(hook)
        except BaseException:
            self.topo.close()
            raise
        self.closed = False
        atexit.register(self.close)

    def set_hook(self, hook: str) -> None:
        """Move the filter to HOOK ('XDP native', 'XDP generic', 'tc ingress')."""
        if self.attachment is not None:
            self.attachment.detach()
        kind, mode = HOOKS[hook]
        self.attachment = (self.filter.attach_xdp(self.rcv, mode) if kind == "xdp"
                           else self.filter.attach_tc(self.rcv, mode)).attach()
        self.hook = hook

    def send(self, count: int = 10_000, dport: int = 9, proto: str = "udp", size: int = 64):
        spec = traffic.TrafficSpec.between(self.snd, self.rcv, count=count, dport=dport, size=size, proto=proto)
        return self.gen.send(spec)

    def counters(self):
        import pandas as pd

        rows = [{"verdict": k, **v} for k, v in self.filter.counters().items()]
        st = self.rcv.stats()
        rows.append({"verdict": "receiver link rx", "packets": st["rx_packets"], "bytes": st["rx_bytes"]})
        return pd.DataFrame(rows)

    def close(self) -> None:
        if getattr(self, "closed", True):
            return
        self.closed = True
        try:
            if self.attachment is not None:
                self.attachment.detach()
            self.gen.close()
            self.filter.close()
        finally:
            self.topo.close()
            atexit.unregister(self.close)

    def widget(self):
        """The controls: hook, rules, a burst, and the live counters."""
        import ipywidgets as w
        from IPython.display import display

        out = w.Output()
        hook = w.Dropdown(options=list(HOOKS), value=self.hook, description="hook")
        drop_all = w.Checkbox(description="drop everything")
        proto = w.Dropdown(options=["(none)"] + sorted(PROTOCOLS), description="drop proto")
        port = w.IntText(value=0, description="drop port")
        src = w.Text(value="", placeholder="10.11.0.0/24", description="drop source")
        count = w.IntSlider(value=10_000, min=1_000, max=1_000_000, step=1_000, description="burst")
        dport = w.IntText(value=9, description="to port")
        send = w.Button(description="send burst", button_style="primary")
        stop = w.Button(description="stop lab", button_style="danger")

        def show(note=""):
            out.clear_output()
            with out:
                if note:
                    print(note)
                if not self.closed:
                    print(f"hook: {self.hook}   rules: {self.filter.rules()}")
                    display(self.counters())

        def apply(_=None):
            try:
                if hook.value != self.hook:
                    self.set_hook(hook.value)
                self.filter.clear()
                if drop_all.value:
                    self.filter.drop_all()
                if proto.value != "(none)":
                    self.filter.drop_proto(proto.value)
                if port.value:
                    self.filter.drop_port(int(port.value))
                if src.value.strip():
                    self.filter.drop_src(src.value.strip())
                show("rules applied while the program runs (no reload)")
            except Exception as exc:
                show(f"refused: {exc}")

        def burst(_):
            try:
                o = self.send(count.value, dport.value)
                show(f"sent {o.packets} packets at {o.pps / 1e6:.2f} Mpps")
            except Exception as exc:
                show(f"send failed: {exc}")

        def finish(_):
            self.close()
            show("lab stopped: namespaces, links and programs removed")

        for c in (hook, drop_all, proto, port, src):
            c.observe(apply, names="value")
        send.on_click(burst)
        stop.on_click(finish)
        show()
        return w.VBox([w.HBox([hook, drop_all]), w.HBox([proto, port, src]), w.HBox([count, dport, send, stop]), out])
