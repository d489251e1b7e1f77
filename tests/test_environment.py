"""The set-up's files agree with each other.

requirements.txt is the one list of Python dependencies: environment.yml must
carry exactly its pins, pyproject.toml must read it, and neither may name
PyPI's unrelated "bcc". bcc itself must come from Debian's python3-bpfcc.
The README's first code block and CI must run the same two commands.

Pure Python: no root, no kernel state.
"""

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"


def requirement_lines(text):
    """The requirement lines of a requirements file: no comments, no blanks."""
    lines = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def distribution_name(requirement):
    """'pandas==3.1.1' -> 'pandas' (normalised as pip does)."""
    name = re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_txt():
    return requirement_lines((REPO / "requirements.txt").read_text())


def environment_yml_pip():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml must have exactly one pip: section"
    return env, [str(line).strip() for line in pip_sections[0]]


def test_requirements_are_all_pinned():
    reqs = requirements_txt()
    assert reqs, "requirements.txt lists no requirement"
    unpinned = [r for r in reqs if "==" not in r]
    assert not unpinned, f"requirements.txt has unpinned requirements: {unpinned}"
    names = [distribution_name(r) for r in reqs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"requirements.txt names these more than once: {duplicates}"


def test_environment_yml_pins_equal_requirements_txt():
    env, pip = environment_yml_pip()
    assert env["name"] == "labkit"
    assert "conda-forge" in env["channels"]
    assert "pip" in env["dependencies"]
    assert "-e ." in pip, "environment.yml's pip section must install labkit itself with '-e .'"
    pins = [line for line in pip if line != "-e ."]
    reqs = requirements_txt()
    only_yml = sorted(set(pins) - set(reqs))
    only_txt = sorted(set(reqs) - set(pins))
    assert not only_yml and not only_txt, (
        "environment.yml's pip pins differ from requirements.txt (the source of truth): "
        f"only in environment.yml {only_yml}, only in requirements.txt {only_txt}"
    )
    assert len(pins) == len(set(pins)), "environment.yml lists a pin twice"


def test_bcc_is_never_a_python_dependency():
    # PyPI's "bcc" is an unrelated library; bcc comes from Debian's python3-bpfcc.
    _, pip = environment_yml_pip()
    for where, reqs in (("requirements.txt", requirements_txt()), ("environment.yml", pip)):
        names = [distribution_name(r) for r in reqs]
        assert "bcc" not in names, f"{where} names PyPI's 'bcc', an unrelated package: remove it"
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda_names = [distribution_name(d) for d in env["dependencies"] if isinstance(d, str)]
    assert "bcc" not in conda_names, "environment.yml must not install bcc with conda either"


def load_pyproject():
    for module in ("tomllib", "tomli"):
        try:
            toml = importlib.import_module(module)
        except ImportError:
            continue
        with open(REPO / "pyproject.toml", "rb") as f:
            return toml.load(f)
    pytest.skip("no TOML parser in this interpreter (tomllib is Python 3.11+; tomli is not installed)")


def test_pyproject_reads_requirements_txt():
    project = load_pyproject()
    assert project["project"]["name"] == "labkit"
    assert "dependencies" in project["project"].get("dynamic", []), (
        "pyproject.toml must declare its dependencies dynamic, read from requirements.txt"
    )
    assert "dependencies" not in project["project"], "pyproject.toml must not list dependencies itself"
    dynamic = project["tool"]["setuptools"]["dynamic"]["dependencies"]
    assert dynamic == {"file": ["requirements.txt"]}
    assert project["project"]["scripts"]["labkit"] == "labkit.cli:main"
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


def test_bcc_comes_from_debian():
    try:
        import bcc
    except ImportError as e:  # also raised when libbcc cannot be loaded
        pytest.skip(
            f"bcc is not importable in this interpreter ({e}); "
            "`sudo make setup` installs Debian's python3-bpfcc and links it into .venv"
        )
    where = os.path.realpath(bcc.__file__)
    assert where.startswith(DEBIAN_DIST_PACKAGES + os.sep), (
        f"bcc was imported from {where}, not from Debian's python3-bpfcc in {DEBIAN_DIST_PACKAGES}: "
        "if it is PyPI's unrelated 'bcc', pip uninstall it and rerun `sudo make setup`"
    )


def test_readme_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme, flags=re.S | re.M)
    assert blocks, "README.md has no fenced code block"
    commands = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["sudo make report", "sudo make test"]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    code = [line.split("#", 1)[0] for line in ci.splitlines()]
    assert any(re.search(r"^\s*(exec\s+)?make\s+test\b", line) for line in code), (
        ".ci/run must run `make test`, the README's test command"
    )
    assert "set -euo pipefail" in ci


def test_setup_script_uses_repo_relative_paths():
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script
    assert str(REPO) not in script, "scripts/setup.sh must not name the repository's own path"
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(REPO / "scripts" / "setup.sh")], check=True)


def test_make_help_lists_the_targets():
    make = shutil.which("make")
    if not make:
        pytest.skip("make is not installed")
    out = subprocess.run(
        [make, "-s", "-C", str(REPO)], check=True, capture_output=True, text=True
    ).stdout  # the default target is help
    for target in ("setup", "report", "test", "bench", "lab", "clean-kernel", "doctor", "clean", "strip-notebooks"):
        assert re.search(rf"^\s+{re.escape(target)}\s", out, flags=re.M), f"`make` does not list {target}"
