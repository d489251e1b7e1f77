"""Which testbed a run is on: an inventory's hosts, or the built-in namespaces."""

from __future__ import annotations

from labkit.testbed.bed import Namespaces


def testbed_for(
    spec=None, roles: dict | None = None, inventory: str | None = None, tools: dict | None = None, two_interfaces=()
):
    """The testbed a run asked for: INVENTORY's hosts (checked against the roles it needs),
    else the namespace topology SPEC with ROLES."""
    if inventory is not None:
        from labkit.testbed.inventory import Testbed

        return Testbed(inventory, list(roles), tools or {}, two_interfaces=two_interfaces)
    spec.validate()
    return Namespaces(spec, roles)
