"""The NAT experiment across machines: the client on the inventory's sender, the NAT on
its DUT, the server on its receiver."""
from __future__ import annotations

from labkit.errors import InputError


def run(p, data_dir=None):
    raise InputError("03-ebpf-nat across hosts (inventory=...) is not available yet; "
                     "run it without inventory on this machine")
