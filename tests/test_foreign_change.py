"""`runs.foreign_change`: what a run changes on an object it does not own is in its
registry before the change is made (a run killed in between leaves `labkit clean`
something to undo), and leaves the registry only once the change is undone."""

from __future__ import annotations

import json

import pytest

from labkit.testbed import runs

#: a record `labkit clean` can undo harmlessly: an offload on an interface that does not exist
RECORD = {"kind": "offload", "ifname": "lkf1-nothere", "feature": "tx"}


def registered(run) -> list:
    return json.loads(run.path.read_text())["foreign"] if run.path.exists() else []


def test_recorded_before_the_change_and_forgotten_after_its_undo():
    seen = []
    with runs.run_scope() as run:
        with runs.foreign_change(
            RECORD, lambda: seen.append(("do", registered(run))), lambda: seen.append(("undo", registered(run)))
        ):
            assert registered(run) == [RECORD]
        assert seen == [("do", [RECORD]), ("undo", [RECORD])]
        assert registered(run) == []


def test_a_change_that_fails_is_forgotten_and_not_undone():
    undone = []

    def fail():
        raise OSError("the kernel said no")

    with runs.run_scope() as run:
        with pytest.raises(OSError, match="the kernel said no"):
            with runs.foreign_change(RECORD, fail, lambda: undone.append(True)):
                pass
        assert registered(run) == [] and undone == []


def test_an_undo_that_fails_keeps_the_record_for_clean():
    def fail():
        raise OSError("busy")

    with runs.run_scope() as run:
        with pytest.raises(OSError, match="busy"):
            with runs.foreign_change(RECORD, lambda: None, fail):
                pass
        assert registered(run) == [RECORD]
        run.forget_foreign(RECORD)
