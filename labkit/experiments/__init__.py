"""One module per experiment. Each composes the core (topology, bpf, traffic, measure,
results) into `run(**params) -> Result`, and its notebook is a thin caller."""
from __future__ import annotations

from labkit.errors import InputError
from labkit.packets import check_size


def check_run_shape(variants: list, known: list, trials: int, sizes: list | None = None,
                    count: int | None = None, count_name: str = "count") -> None:
    """The checks every experiment's parameters share: variants known and each named
    once, trials, packet sizes and packets per trial in range. Raised before the kernel is
    touched, saying what to change."""
    unknown = [v for v in variants if v not in known]
    if unknown or not variants:
        raise InputError(f"variants {unknown or variants}: choose from {known}")
    if len(set(variants)) != len(variants):
        raise InputError(f"variants {variants}: each at most once")
    if not isinstance(trials, int) or trials < 1:
        raise InputError(f"trials {trials!r}: at least 1")
    if sizes is not None:
        if not sizes:
            raise InputError("sizes is empty: give at least one frame size, e.g. [64]")
        for s in sizes:
            check_size(s)
    if count is not None and (not isinstance(count, int) or count < 1):
        raise InputError(f"{count_name} {count!r}: send at least one packet per trial")
