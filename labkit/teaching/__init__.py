"""Teaching: what the course in labs/ builds on.

- `students`: a student's slot (``LABKIT_STUDENT=s07``), names, pinned-map folder and the
  machine-wide measurement lock, so many students share one machine;
- `magic`: the ``%%bpf`` cell magic (C in a cell, compiled and loaded by bcc, kept in a name);
- `frames`: crafted frames, the awkward ones included (truncated, IP options, VLAN, ARP);
- `checks`: exercise checks that print expected against actual with a hint;
- `live`: a student's testbed and measurements with traffic, for the measuring lessons;
- `release`: the step `make labs` adds to nbgrader's (C stubs in `%%bpf` cells).

In a notebook, ``%load_ext labkit.teaching`` registers the magic.
"""

from __future__ import annotations


def load_ipython_extension(ipython) -> None:
    from labkit.teaching import magic

    magic.register(ipython)
