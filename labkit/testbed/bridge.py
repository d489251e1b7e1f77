"""A Linux bridge over a host's ports, as a context manager: exit deletes it."""

from __future__ import annotations

import errno

from labkit.testbed import runs, signals


class Bridge:
    """A Linux bridge over PORTS on their host; exit deletes it (the ports are released)."""

    def __init__(self, host, ports: list, name: str = "br0"):
        self.host, self.ports = host, ports
        self.name = runs.current_run().name(name) if runs.current_run() else name
        self.index = None

    def __enter__(self):
        with signals.deferred_signals(), self.host.ipr() as ipr:
            ipr.link("add", ifname=self.name, kind="bridge", br_forward_delay=0, br_stp_state=0)
            self.index = ipr.link_lookup(ifname=self.name)[0]
        try:
            with self.host.ipr() as ipr:
                for p in self.ports:
                    ipr.link("set", index=p.ifindex, master=self.index)
                ipr.link("set", index=self.index, state="up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        idx, self.index = self.index, None
        if idx is None:
            return
        with self.host.ipr() as ipr:
            try:
                ipr.link("del", index=idx)
            except Exception as e:
                if getattr(e, "code", None) != errno.ENODEV:
                    raise
