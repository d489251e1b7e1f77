"""The kernel's jiffies clock, which the NAT's flows are timed by (bpf_jiffies64): the
counter now and its rate (CONFIG_HZ), to turn seconds into jiffies and back."""

from __future__ import annotations

import functools
import gzip
import platform
import re
import time
from contextlib import suppress

from labkit.errors import LabkitError


@functools.cache
def kernel_hz() -> int:
    """The kernel's tick rate (CONFIG_HZ): jiffies per second, the unit of flow times."""
    text = ""
    for config in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        with suppress(OSError):
            text = (gzip.open if config.endswith(".gz") else open)(config, "rt").read()
            break
    m = re.search(r"^CONFIG_HZ=(\d+)", text, re.M)
    return int(m.group(1)) if m else _measure_hz()


def _measure_hz() -> int:
    j0, t0 = jiffies_now(), time.monotonic()
    time.sleep(0.5)
    rate = (jiffies_now() - j0) / (time.monotonic() - t0)
    return min((100, 250, 300, 1000), key=lambda hz: abs(hz - rate))


def jiffies_now() -> int:
    """The kernel's jiffies counter (what bpf_jiffies64 reads), from /proc/timer_list."""
    with open("/proc/timer_list") as f:
        for line in f:
            if line.startswith("jiffies: "):
                return int(line.split()[1])
    raise LabkitError("no 'jiffies:' line in /proc/timer_list: cannot age the NAT's flows")
