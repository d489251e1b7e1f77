"""Which testbed a run was measured on, read from its metadata, so that the comparison and
the index keep every testbed's numbers apart (never averaged across testbeds).

A run's metadata (results.ResultSet.save) says where it ran:

- a run on this machine's namespace testbed (or its named interfaces) records the
  machine's ``host`` and a ``topology`` of links, each end with ``real`` true or false;
- a run over an inventory records its ``topology`` as ``{"inventory": path, "hosts":
  {name: {"role": ..., ...}}}`` (labkit.testbed.inventory);
- a run executed by a Dask worker (labkit.reporting.cluster) carries ``testbed`` (the
  worker's name) and ``worker_host``, beside either of the above.

    testbed_of(meta)   # 'namespace testbed on lab1', 'hosts gen1 (sender), dut1 (receiver)',
                       # 'Dask worker tb2 on lab1 · namespace testbed on lab1'
"""

from __future__ import annotations


def _hosts(topo: dict) -> str | None:
    hosts = topo.get("hosts")
    if not isinstance(hosts, dict) or not hosts:
        return None
    parts = [f"{name} ({h.get('role', '?') if isinstance(h, dict) else '?'})" for name, h in sorted(hosts.items())]
    return "hosts " + ", ".join(parts)


def _real(topo: dict) -> bool:
    for link in topo.get("links") or []:
        for end in link if isinstance(link, list) else []:
            if isinstance(end, dict) and end.get("real"):
                return True
    return False


def testbed_of(meta: dict) -> str:
    """A short label of the testbed a run's METADATA describes (see the module docstring)."""
    meta = meta if isinstance(meta, dict) else {}
    topo = meta.get("topology") if isinstance(meta.get("topology"), dict) else {}
    host = meta.get("host") or "?"
    where = _hosts(topo) or (f"interfaces of {host}" if _real(topo) else f"namespace testbed on {host}")
    if meta.get("testbed"):
        return f"Dask worker {meta['testbed']} on {meta.get('worker_host') or host} · {where}"
    return where
