"""Making the student versions: what `make labs` adds to nbgrader's own steps.

nbgrader replaces a solution region with its stub for the notebook's language, Python:
``# YOUR CODE HERE`` / ``raise NotImplementedError()``. In a ``%%bpf`` cell that stub sits in
C, so `CStubs`, run right after nbgrader's ClearSolutions (labs/nbgrader_config.py puts it
there), turns it into ``/* YOUR CODE HERE */``: the student sees C, and the starter compiles.
(The magic reads the Python stub the same way, for releases made without this step.)
"""

from __future__ import annotations

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

from labkit.teaching.magic import from_stub


def is_bpf_cell(cell) -> bool:
    return cell.get("cell_type") == "code" and cell.get("source", "").lstrip().startswith("%%bpf")


class CStubs(Preprocessor):
    """In %%bpf cells, nbgrader's Python stub becomes the C comment /* YOUR CODE HERE */."""

    enabled = Bool(True).tag(config=True)  # nbconvert's preprocessors are off unless enabled

    def preprocess_cell(self, cell, resources, index):
        if is_bpf_cell(cell):
            cell.source = from_stub(cell.source)
        return cell, resources


def with_c_stubs(preprocessors: list) -> list:
    """nbgrader's GenerateAssignment.preprocessors with CStubs right after ClearSolutions."""
    out = list(preprocessors)
    at = next((i for i, p in enumerate(out) if getattr(p, "__name__", "") == "ClearSolutions"), None)
    if at is None:
        raise ValueError("nbgrader's preprocessors have no ClearSolutions step to follow")
    out.insert(at + 1, CStubs)
    return out
