"""Line rates: how many frames a link of a named speed carries at a frame size, and the rate
a generator is to hold given a spec's `rate_pps` or a fraction of the line rate (the
options `link_speed` and `line_fraction` of the XDP generators).

    line_rate_pps("10G", 60)                 # 14.88 Mpps: 64 bytes on the wire with the FCS
    target_rate(spec, "10G", 0.5)            # half of it, or InputError where it cannot be
"""

from __future__ import annotations

import re

from labkit.errors import InputError
from labkit.traffic import TrafficSpec

#: preamble (7) + start delimiter (1) + FCS (4) + inter-frame gap (12): bytes on the wire
#: per frame besides `size` (which excludes the FCS)
WIRE_OVERHEAD = 24
_SPEED_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:bit|b|bps)?(?:/s)?\s*$")


def parse_speed(speed) -> float:
    """A link speed in bits/s: a number, or '10G', '25Gbit', '100M', '1.5G'."""
    if isinstance(speed, (int, float)) and not isinstance(speed, bool):
        value = float(speed)
    else:
        m = _SPEED_RE.match(str(speed)) if isinstance(speed, str) else None
        if not m:
            raise InputError(f"link speed {speed!r}: write bits per second, e.g. 10e9, '10G', '25Gbit', '100M'")
        value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2).lower()]
    if value <= 0:
        raise InputError(f"link speed {speed!r} must be positive")
    return value


def line_rate_pps(speed, size: int) -> float:
    """Frames per second of SIZE bytes (without FCS) that a link of SPEED carries at most,
    counting the preamble, FCS and inter-frame gap: 10G at size 60 (64 bytes on the wire
    with FCS) is 14.88 Mpps; at size 64, 14.2 Mpps."""
    return parse_speed(speed) / ((size + WIRE_OVERHEAD) * 8)


def target_rate(spec: TrafficSpec, link_speed=None, line_fraction=None) -> float | None:
    """The rate to hold (pps), or None for as fast as possible; InputError when it is not
    possible on the named link."""
    rate = spec.rate_pps
    if line_fraction is not None:
        if link_speed is None:
            raise InputError("line_fraction needs link_speed: name the link's speed, e.g. link_speed='10G'")
        if not 0 < float(line_fraction) <= 1:
            raise InputError(f"line_fraction {line_fraction!r}: a fraction of the line rate in (0, 1]")
        if rate is not None:
            raise InputError("give either spec.rate_pps or line_fraction, not both")
        rate = float(line_fraction) * line_rate_pps(link_speed, spec.size)
    if rate is not None and link_speed is not None:
        line = line_rate_pps(link_speed, spec.size)
        if rate > line * 1.000001:
            raise InputError(
                f"rate {rate:,.0f} pps is above what a {link_speed} link carries at {spec.size} bytes "
                f"({line:,.0f} pps with preamble, FCS and gap): ask for at most that, or a line_fraction <= 1"
            )
    return rate
