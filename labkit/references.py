"""Published reference values, shown beside our measurements and never mixed with them.
Each carries where it comes from and what it measured, so a reader can see where a laptop
or a namespace testbed run stands."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    label: str
    value: float
    unit: str
    source: str
    note: str = ""


XDP_PAPER = "Høiland-Jørgensen et al., The eXpress Data Path, CoNEXT 2018"
BARE_METAL = "bare metal, 64-byte packets, one core"
POSTER_XDP_DROP = Reference(
    "poster: XDP drop",
    13.0,
    "Mbit/s",
    "the poster this workbench grew from",
    "XDP packet drop on a 40G NIC, as reported there",
)
XDP_PAPER_XDP_DROP = Reference("XDP paper: XDP drop", 24e6, "pps per core", XDP_PAPER, BARE_METAL)
XDP_PAPER_DPDK_DROP = Reference("XDP paper: DPDK drop", 43.5e6, "pps per core", XDP_PAPER, BARE_METAL)
XDP_PAPER_IPTABLES_RAW = Reference("XDP paper: iptables raw drop", 4.8e6, "pps per core", XDP_PAPER, BARE_METAL)

DROP = [POSTER_XDP_DROP, XDP_PAPER_XDP_DROP, XDP_PAPER_IPTABLES_RAW, XDP_PAPER_DPDK_DROP]


def table(refs=DROP):
    import pandas as pd

    return pd.DataFrame(
        [{"reference": r.label, "value": r.value, "unit": r.unit, "source": r.source, "note": r.note} for r in refs]
    )
