"""The testbed: where experiments run, and everything they change in the kernel.

- `runs`: a run's identity (the ``lkXXXX`` prefix of every name) and its registry file;
- `signals`: SIGTERM/SIGHUP as an exception that unwinds, signals held around kernel calls
  that must happen together, Ctrl-C forwarded to a notebook's kernel;
- `hosts`: a host (a network namespace, or the root namespace) to run and spawn on;
- `topology`: namespaces and veth pairs (or real interfaces) from a declarative spec;
- `netfilter`: iptables rules as context managers;
- `bridge`: a Linux bridge over a host's ports.

Every change is made by a context manager whose exit undoes it; `labkit.cleanup` finds
what a crashed run left.
"""
