"""iptables rules as context managers, and their counters.

    with netfilter.rule(host, "raw", "PREROUTING", "-i", ifname, "-p", "udp", "-j", "DROP") as r:
        ...
        r.counters()  # {'packets': n, 'bytes': b}

Every rule carries the comment ``labkit:<run prefix>:<n>``, unique to the rule: `labkit
clean` finds one a crashed run left in the root namespace by its run prefix (rules inside
a labkit namespace go with it), and `counters()` reads this rule's line and no other, even
where two rules match alike (a counting rule in front of a dropping one).
Rules are inserted at the top of their chain, so they see packets first.
"""

from __future__ import annotations

import itertools
import os
import re

from labkit.errors import InputError
from labkit.testbed import runs, signals
from labkit.testbed.hosts import Host, which

TABLES = {"raw", "mangle", "nat", "filter", "security"}
_serial = itertools.count(1)


class Rule:
    def __init__(self, host: Host, table: str, chain: str, args: list[str], ipv6: bool = False):
        if table not in TABLES:
            raise InputError(f"iptables table {table!r}: choose one of {sorted(TABLES)}")
        if not chain or not re.match(r"^[A-Za-z0-9_-]+$", chain):
            raise InputError(f"iptables chain {chain!r} is not a chain name")
        self.host, self.table, self.chain = host, table, chain
        self.binary = "ip6tables" if ipv6 else "iptables"
        run = runs.current_run()
        # the run's prefix (what `labkit clean` reads), then this process and rule: unique
        self.tag = f"{runs.RULE_COMMENT}{run.prefix if run else 'lk0000'}:{os.getpid()}.{next(_serial)}"
        self.args = [str(a) for a in args] + ["-m", "comment", "--comment", self.tag]
        self.added = False

    def add(self) -> "Rule":
        which(self.binary, "iptables")
        with signals.deferred_signals():
            self.host.run([self.binary, "-w", "-t", self.table, "-I", self.chain, "1", *self.args], timeout=30)
            self.added = True
        return self

    def delete(self) -> None:
        if not self.added:
            return
        cp = self.host.run([self.binary, "-w", "-t", self.table, "-D", self.chain, *self.args], check=False, timeout=30)
        gone = any(said in (cp.stderr or "") for said in ("does a matching rule exist", "No such file"))
        if cp.returncode != 0 and not gone:
            raise RuntimeError(f"could not delete iptables rule in {self.host}: {cp.stderr.strip()}")
        self.added = False

    def counters(self) -> dict:
        """Packets and bytes this rule has matched (from `iptables -L -v -x`)."""
        out = self.host.run(
            [self.binary, "-w", "-t", self.table, "-L", self.chain, "-v", "-x", "-n"], timeout=30
        ).stdout
        for line in out.splitlines():
            if f"/* {self.tag} */" in line:
                fields = line.split()
                return {"packets": int(fields[0]), "bytes": int(fields[1])}
        raise RuntimeError(f"rule {self.tag} not found in {self.table}/{self.chain} on {self.host}")

    def __enter__(self):
        return self.add()

    def __exit__(self, *exc):
        self.delete()


def rule(host: Host, table: str, chain: str, *args, ipv6: bool = False) -> Rule:
    """An iptables rule in HOST's namespace, removed on exit. Use in a `with`."""
    return Rule(host, table, chain, list(args), ipv6)
