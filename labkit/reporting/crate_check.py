"""A crate read back (`labkit rerun`), checked before anything is trusted:

    with crate_check.opened("run.zip") as packaged:   # extracted into a temporary folder
        packaged.runs, packaged.lock, packaged.crate

Every file in the zip must be one that ro-crate-metadata.json describes, with the sha256
recorded there (`reporting.crate` writes both); a file changed, missing or added after
export is refused with an InputError that names it, before anything runs.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import InputError
from labkit.reporting.crate import LOCK, METADATA, PackagedRun, sha256


@dataclass
class Packaged:
    path: Path
    folder: Path  # where it was extracted
    runs: list
    lock: dict
    crate: object  # the rocrate.ROCrate read back


def _extract(zip_path: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for name in zf.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise InputError(f"{zip_path}: holds {name!r}, a path outside the crate: refused")
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{zip_path}: not a zip file ({exc}); give a crate written by `labkit export`") from None


def validate(folder: Path, name: str = "the crate"):
    """The rocrate.ROCrate of an extracted crate in FOLDER once every file it holds is one
    its metadata describes, with the recorded sha256: InputError naming the first that is
    not (changed, missing, or undescribed)."""
    from rocrate.rocrate import ROCrate

    if not (folder / METADATA).is_file():
        raise InputError(f"{name}: no {METADATA}; give a crate written by `labkit export`")
    try:
        crate = ROCrate(folder)
    except Exception as exc:
        raise InputError(f"{name}: its {METADATA} is not a readable RO-Crate ({exc})") from None
    described = {}
    for e in crate.data_entities:
        if e.type == "File":
            described[e.id] = e.get("sha256")
    for rel, recorded in sorted(described.items()):
        path = folder / rel
        if not recorded:
            raise InputError(f"{name}: {rel} has no recorded sha256: not a crate written by `labkit export`")
        if not path.is_file():
            raise InputError(f"{name}: {rel} is described in {METADATA} but missing from the zip")
        found = sha256(path)
        if found != recorded:
            raise InputError(
                f"{name}: {rel} was changed after export (sha256 {found[:16]}…, recorded "
                f"{recorded[:16]}…): the crate cannot be trusted; ask for a fresh export"
            )
    extra = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and str(p.relative_to(folder)) not in described and p.name != METADATA
    )
    if extra:
        raise InputError(f"{name}: holds {', '.join(extra[:3])}, which its {METADATA} does not describe: refused")
    if LOCK not in described:
        raise InputError(f"{name}: no {LOCK}: not a crate written by `labkit export`")
    return crate


@contextlib.contextmanager
def opened(zip_path):
    """The crate at ZIP_PATH extracted into a temporary folder and checked (`validate`), as
    Packaged; the folder is removed afterwards."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise InputError(f"{zip_path}: no such file; give a crate written by `labkit export RUN -o FILE.zip`")
    with tempfile.TemporaryDirectory(prefix="labkit-rerun-") as tmp:
        folder = Path(tmp)
        _extract(zip_path, folder)
        crate = validate(folder, zip_path.name)
        runs = []
        for params_file in sorted(folder.glob("runs/*/parameters.json")):
            d = json.loads(params_file.read_text())
            run_dir = params_file.parent
            nb = run_dir / f"{d['notebook']}.ipynb"
            html = run_dir / f"{d['notebook']}.html"
            runs.append(
                PackagedRun(
                    d["run_id"],
                    d["experiment"],
                    d["notebook"],
                    d["parameters"],
                    d["parameters_from"],
                    run_dir,
                    nb if nb.is_file() else None,
                    html if html.is_file() else None,
                    d.get("recorded") or {},
                )
            )
        if not runs:
            raise InputError(f"{zip_path.name}: holds no run (no runs/*/parameters.json)")
        yield Packaged(zip_path, folder, runs, json.loads((folder / LOCK).read_text()), crate)
