"""A live rate plot for the interactive labs: the per-second rx/tx packets, drops and the
attached XDP programs' counters of a lab's interfaces over the last WINDOW seconds, the
numbers `labkit watch` prints, from the same sampler (`labkit.measure.watch.Sampler`).

    plot = RatePlot(targets, names={"counters[0]": "filter: pass"}, guard=lambda: holding(lab))
    display(plot.widget)   # the latest rates as a line of text, the plot as a PNG image
    plot.stop()            # the lab's widget does it when the lab closes

Each second a background thread (a `controls.Ticker`) takes one step of the sampler while
holding GUARD (the lab's lock; `LabStopped` from it ends the plot, so nothing samples a
closed lab's namespaces), then draws. A plot built over a lab that is already closed starts
stopped: no sampler, no thread, an empty image that says so. A series is drawn where it was not zero somewhere in
the window: `<iface> rx`, `<iface> tx`, `<iface> drops` (link and driver ring drops),
`<iface> xdp_drop` (frames an XDP program dropped, as the driver counts them) and the
attached programs' counters: those NAMES names ({'map[slot]': label}) under their label,
once even where several ports' programs share the map; others as `<program>: map[slot]`.

matplotlib draws off-screen (its Agg canvas, no pyplot state, one figure reused) into a
PNG shown by an `ipywidgets.Image`: JupyterLab shows each new one, and a notebook saved with
its widget state shows the last one without a kernel. `stop()` joins the thread.
"""

from __future__ import annotations

import contextlib
import html
import io
import time
from collections import deque

from labkit.measure import watch
from labkit.testbed.livelab import LabStopped
from labkit.widgets.controls import Ticker, describe, widgets

WINDOW = 60  # seconds of history shown


def series_of(rows: list[dict], names: dict | None = None) -> dict:
    """{series name: per-second value} of one step's rows (see the module docstring)."""
    names = names or {}
    out, programs = {}, set()
    for r in rows:
        iface = r["iface"].split(":")[-1]
        short = iface.split("-", 1)[1] if iface.startswith("lk") and "-" in iface else iface
        out[f"{short} rx"] = r["rx_pps"]
        out[f"{short} tx"] = r["tx_pps"]
        out[f"{short} drops"] = r["rx_drop_ps"] + r["tx_drop_ps"] + r.get("ring_drop_ps", 0)
        if "xdp_drop_ps" in r:
            out[f"{short} xdp_drop"] = r["xdp_drop_ps"]
        if r["xdp"] and r["xdp"] not in programs:  # a program on several ports: its counters once
            programs.add(r["xdp"])
            prog = r["xdp"].split("#")[0]
            for k, v in r["counters"].items():
                out.setdefault(names[k] if k in names else f"{prog}: {k}", v)
    return out


class RatePlot:
    """The live plot of TARGETS (`watch.Target`s); see the module docstring."""

    def __init__(
        self,
        targets: list,
        *,
        names: dict | None = None,
        guard=None,
        window: int = WINDOW,
        interval: float = 1.0,
        title: str = "per-second rates",
    ):
        watch.check_interval(interval)
        w = widgets()
        self.names, self.window, self.interval, self.title = names or {}, int(window), interval, title
        self.guard = guard or contextlib.nullcontext
        self.history: deque = deque(maxlen=max(2, int(window / interval)))  # (monotonic time, {series: value})
        self.text = w.HTML("<i>rates: the first second is being measured</i>").add_class("lk-rates")
        self.image = w.Image(format="png", layout=w.Layout(width="900px")).add_class("lk-rateplot-image")
        self.widget = w.VBox([self.text, self.image]).add_class("lk-rateplot")
        self.draws = 0  # images drawn (an empty window is drawn once, not again each second)
        self._figure, self._drawn_busy, self._stopped = None, False, False
        self.sampler, self.ticker = None, None
        try:
            with self.guard():
                self.sampler = watch.Sampler(targets)
        except LabStopped:  # the lab closed before (or while) the plot was built: it starts stopped
            pass
        self.draw()  # the empty axes at once, never a broken image
        if self.sampler is None:
            self.stop()
        else:
            self.ticker = Ticker(self.tick, interval, name="lk-rateplot")

    # ---- data
    def tick(self) -> bool:
        """One step: sample, record, draw. False (the ticker stops) once the lab is stopped."""
        try:
            with self.guard():
                rows = self.sampler.step()
        except LabStopped:
            return False
        except Exception as exc:  # a sample that failed: say so, try again next second
            self.text.value = f"<i>rates unavailable: {html.escape(describe(exc))}</i>"
            return True
        self.history.append((time.monotonic(), series_of(rows, self.names)))
        last = self.history[-1][1]
        busy = ", ".join(f"{k} {watch.per_s(v)}" for k, v in last.items() if v >= 0.5) or "no traffic"
        self.text.value = f"rates at {time.strftime('%H:%M:%S')}: {html.escape(busy)}"
        self.draw()
        return True

    def series(self, name: str) -> list[float]:
        """The values of series NAME over the window, oldest first (0 where it was absent)."""
        return [values.get(name, 0.0) for _, values in self.history]

    def shown(self) -> list[str]:
        """The series drawn: those not zero somewhere in the window."""
        seen: dict = {}
        for _, values in self.history:
            for k, v in values.items():
                seen[k] = seen.get(k, False) or v > 0
        return [k for k, busy in seen.items() if busy]

    # ---- drawing
    def _axes(self):
        if self._figure is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self._figure = Figure(figsize=(10, 3.2), dpi=90)
            FigureCanvasAgg(self._figure)
            self._figure.subplots_adjust(left=0.08, right=0.72, bottom=0.16, top=0.88)
            self._figure.add_subplot(1, 1, 1)
        ax = self._figure.axes[0]
        ax.clear()
        return ax

    def draw(self) -> None:
        from matplotlib.ticker import EngFormatter

        shown = self.shown()
        if not shown and self.draws and not self._drawn_busy:
            return  # an empty window again: the image it would draw is the one shown
        self._drawn_busy = bool(shown)
        ax = self._axes()
        now = self.history[-1][0] if self.history else time.monotonic()
        x = [t - now for t, _ in self.history]
        for name in shown:
            style = "--" if name.endswith(("drops", "xdp_drop")) else ":" if ": " in name else "-"
            ax.plot(x, self.series(name), style, label=name, linewidth=1.6)
        ax.set_xlim(-self.window, 0)
        top = max((max(self.series(n)) for n in shown), default=0)
        ax.set_ylim(0, max(10.0, top * 1.1))
        ax.set_xlabel("seconds ago")
        ax.set_ylabel("per second")
        ax.yaxis.set_major_formatter(EngFormatter())
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{self.title}, last {self.window} s (as `labkit watch` reads them)", fontsize=10)
        if shown:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        else:
            empty = f"no traffic in the last {self.window} s"
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="#666")
        buf = io.BytesIO()
        self._figure.savefig(buf, format="png")
        self.image.value = buf.getvalue()
        self.draws += 1

    # ---- life
    @property
    def running(self) -> bool:
        return self.ticker is not None and self.ticker.running

    def stop(self) -> None:
        """Stop sampling and drawing (the last plot stays, and says so); joins the thread.
        Harmless twice."""
        if not self._stopped:
            self._stopped = True
            if self.ticker is None:  # never started: the lab was closed when the plot was built
                self.text.value = "<i>no live plot: the lab was already stopped</i>"
                return
            self.ticker.stop()
            self.text.value = (
                f"<i>the live plot stopped at {time.strftime('%H:%M:%S')}; it shows the {self.window} s before</i>"
            )
