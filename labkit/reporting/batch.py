"""Batch runs: every experiment notebook executed headlessly with papermill, exported as
self-contained HTML (images embedded, no script from the network), and an index page that
a person opens first.

    labkit report                      # every notebooks/NN-*.ipynb, default parameters
    labkit report 01-xdp-drop -p trials 5 -f params.yaml
    labkit run 01-xdp-drop --smoke     # one notebook, a seconds-long run

Parameters: `-p NAME VALUE` (value read as YAML) goes to every notebook that declares
NAME; `-p 01-xdp-drop:NAME VALUE` to that notebook only. A YAML file (`-f`) holds
`NAME: VALUE` pairs for every notebook and, under a notebook's name, pairs for that one:

    trials: 5
    01-xdp-drop:
      sizes: [64]
      count: 2000000

Executed notebooks and HTML go to reports/; each experiment writes its own tables to
data/. A notebook that fails does not stop the others: the index marks it failed and
links its executed copy, which shows the error; the command then exits non-zero.
reports/batch.json records each notebook's status, time, parameters and the data/ runs
it wrote.

reports/index.html shows the environment (kernel, CPU, versions, commit), the notebooks
with status, time and links, one headline figure per experiment (from the run this batch
wrote, else the latest run in data/, said so), and the warnings that matter: failed
notebooks, generator-limited variants, loss before the hook, variants that could not run
and why, veth caveats (from each run's metadata `caveats` and its table's `flags`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from labkit import NOTEBOOKS_DIR
from labkit import parameters as declarations
from labkit.errors import InputError
from labkit.reporting import batchfile
from labkit.reporting.batchfile import NotebookRun
from labkit.reporting.index import write_index
from labkit.testbed.signals import interrupts_reach_the_kernel

KERNEL = "labkit"
SECTION = re.compile(r"^\d\d-[\w.-]+$")  # a notebook's name as a parameters section
#: the notebook that reads every run in data/: it runs after every experiment notebook
COMPARISON = "04-comparison"


def notebooks(names=None, directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The experiment notebooks (NN-name.ipynb) in reading order, or those NAMES pick
    (a name may omit the number and the .ipynb: '01-xdp-drop', 'xdp-drop')."""
    found = sorted(Path(directory).glob("[0-9][0-9]-*.ipynb"), key=lambda p: (p.stem == COMPARISON, p.name))
    if not names:
        return found
    picked = []
    for n in names:
        n = Path(n).name.removesuffix(".ipynb")
        match = [p for p in found if p.stem == n or p.stem[3:] == n]
        if not match:
            stems = [p.stem for p in found]
            raise InputError(f"no notebook {n!r}{declarations.did_you_mean(n, stems)}; notebooks: {', '.join(stems)}")
        picked.extend(m for m in match if m not in picked)
    return picked


def load_parameters(files=(), pairs=()) -> dict:
    """Parameters from YAML files (-f) and NAME VALUE pairs (-p), later ones winning.
    Values of -p are read as YAML, so `-p sizes "[64, 128]"` is a list, as in papermill.
    A file's mapping under a notebook's name (`01-xdp-drop: {...}`), and a pair named
    `NOTEBOOK:NAME`, apply to that notebook only (kept as a nested section)."""
    import yaml

    params = {}
    for f in files or ():
        path = Path(f)
        if not path.is_file():
            raise InputError(f"parameters file {f} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise InputError(
                f"parameters file {f} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}): "
                "save it as UTF-8"
            ) from None
        except yaml.YAMLError as exc:
            raise InputError(f"parameters file {f} is not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise InputError(f"{f}: a parameters file holds a mapping of NAME: VALUE")
        for k, v in data.items():
            if SECTION.match(str(k)):
                if not isinstance(v, dict):
                    raise InputError(f"{f}: the section {k} must hold a mapping of NAME: VALUE")
                params.setdefault(str(k), {}).update(v)
            else:
                params[k] = v
    for name, value in pairs or ():
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InputError(
                f"-p {name} {value}: the value is read as YAML and is not valid: "
                f"{_yaml_problem(exc)}; quote text, write lists as '[64, 1500]'"
            ) from None
        if ":" in name:
            section, name = name.split(":", 1)
            if not SECTION.match(section) or not name.isidentifier():
                raise InputError(f"-p {section}:{name}: write NOTEBOOK:NAME, e.g. -p 01-xdp-drop:trials 5")
            params.setdefault(section, {})[name] = value
        else:
            params[name] = value
    return params


def _yaml_problem(exc) -> str:
    """A YAML error in one line: what and where."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what


def parameters_for(nb: Path, parameters: dict) -> dict:
    """The parameters one notebook gets: the common ones, then its own section."""
    common = {k: v for k, v in parameters.items() if not SECTION.match(str(k))}
    common.update(parameters.get(nb.stem) or {})
    return common


def kernel_name() -> str:
    """The `labkit` Jupyter kernel (set-up registers it), else the running Python's."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if KERNEL in KernelSpecManager().find_kernel_specs():
            return KERNEL
    except Exception:
        pass
    return "python3"


def execute(
    nb: Path,
    parameters: dict,
    out_dir: Path,
    data_dir: Path | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> NotebookRun:
    """Run one notebook with papermill into OUT_DIR and export it to HTML, whatever
    happened. Its kernel writes its tables to DATA_DIR (default: labkit.DATA_DIR, which
    LABKIT_DATA_DIR sets). Of PARAMETERS it gets those it declares (`check` refuses the
    others before anything runs). A failure is kept as one line (the exception and its
    message; the executed notebook holds the traceback), with the traceback's end too
    when VERBOSE."""
    import papermill as pm

    from labkit import DATA_DIR, results

    nb = Path(nb)
    out_dir = Path(out_dir)
    data_dir = Path(data_dir or DATA_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / nb.name
    declared = _declared_parameters(nb)
    params = {k: v for k, v in parameters_for(nb, parameters).items() if k in declared}
    if not progress and "progress" in declared:
        params.setdefault("progress", False)  # --no-progress: the experiment's own bars too
    before = set(results.list_runs(None, data_dir))
    t0 = time.monotonic()
    ok, error = True, ""
    # the kernel inherits these: a run records its notebook and writes where this batch reads
    env = {"LABKIT_NOTEBOOK": nb.stem, "LABKIT_DATA_DIR": str(data_dir)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            str(nb),
            str(executed),
            parameters=params,
            kernel_name=kernel_name(),
            cwd=str(nb.parent),
            progress_bar=progress,
            report_mode=False,
        )
    except Exception as exc:  # PapermillExecutionError and start-up failures alike
        ok, error = False, _one_line_error(exc) + ("\n" + _short_error(exc) if verbose else "")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.monotonic() - t0
    html_path = None
    if executed.exists():
        try:
            html_path = export_html(executed)
        except Exception as exc:
            error = (error + "\n" if error else "") + f"HTML export failed: {exc}"
    new = _own_runs(nb.stem, sorted(set(results.list_runs(None, data_dir)) - before), params)
    return NotebookRun(nb.stem, nb, executed, html_path, ok, seconds, error, params, new)


def _own_runs(stem: str, new: list, params: dict) -> list:
    """Of the runs that appeared in data/ while notebook STEM ran, those it wrote: other
    work on this machine (tests, another batch) may write runs at the same time. A run
    whose metadata names its notebook (`notebook`, from LABKIT_NOTEBOOK) is matched by
    that; otherwise by experiment and by smoke (the notebook's parameter)."""
    from labkit import experiments as declared
    from labkit.reporting import compare

    experiments = set(declared.notebook_experiments().get(stem, ()))  # each experiment names its NOTEBOOK
    smoke = bool(params.get("smoke", False))
    own = []
    for path in new:
        meta = compare._meta(path)
        if "notebook" in meta:
            if meta["notebook"] == stem:
                own.append(path)
        elif path.parent.name in experiments and bool((meta.get("parameters") or {}).get("smoke", False)) == smoke:
            own.append(path)
    return own


def _declared_parameters(nb: Path) -> dict:
    """{name: (annotation, default)} of the notebook's `parameters` cell (`name: type =
    default  # comment`; the annotation as written, "" if none; the default evaluated
    where it is a literal): what papermill may set, and what `--help-notebook` lists."""
    import ast

    data = json.loads(Path(nb).read_text())
    for cell in data.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            names = {}
            try:
                tree = ast.parse("".join(cell["source"]))
            except SyntaxError:
                return names
            for node in tree.body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    target, annotation, value = node.target.id, ast.unparse(node.annotation), node.value
                elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    target, annotation, value = node.targets[0].id, "", node.value
                else:
                    continue
                try:
                    default = ast.literal_eval(value) if value is not None else None
                except ValueError:
                    default = None
                names[target] = (annotation, default)
            return names
    return {}


def _experiment_params(stem: str):
    """The Params dataclass of the experiment notebook STEM runs, or None (04-comparison
    and other notebooks: their parameters cell is their whole declaration)."""
    from labkit import experiments

    for module in experiments.declared():
        if module.NOTEBOOK == stem and isinstance(getattr(module, "Params", None), type):
            return module.Params
    return None


def check(names, parameters: dict, smoke: bool = False, directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Everything about a batch that can be checked before a notebook starts, as
    InputError with one line that says what to change: the notebooks exist; a section
    (NOTEBOOK:NAME, or a file's NOTEBOOK: mapping) names a notebook; every parameter is
    declared by a notebook it goes to; each value has the type its notebook declares; and
    an experiment's values pass its Params.validate (the same check run() makes), smoke
    included. Returns the chosen notebooks."""
    chosen = notebooks(names, directory)
    if not chosen:
        raise InputError(f"no experiment notebooks in {directory}")
    every = {p.stem: p for p in notebooks(None, directory)}
    sections = [k for k in parameters if SECTION.match(str(k))]
    for s in sections:
        if s not in every:
            raise InputError(
                f"parameters for notebook {s!r}, which does not exist{declarations.did_you_mean(s, every)}; "
                f"notebooks: {', '.join(every)}"
            )
        declarations.check_names(parameters[s], _declared_parameters(every[s]), f"notebook {s}")
    declared = {p.stem: _declared_parameters(p) for p in chosen}
    common = [k for k in parameters if k not in sections]
    for name in common:
        if not any(name in d for d in declared.values()):
            if len(chosen) == 1:
                declarations.check_names([name], declared[chosen[0].stem], f"notebook {chosen[0].stem}")
            known = sorted({n for d in declared.values() for n in d})
            raise InputError(
                f"no notebook has a parameter {name!r}{declarations.did_you_mean(name, known)}; "
                f"they declare: {', '.join(known)}"
            )
    for nb in chosen:
        given = parameters_for(nb, dict(parameters, smoke=True) if smoke else parameters)
        given = {k: v for k, v in given.items() if k in declared[nb.stem]}
        params = _experiment_params(nb.stem)
        try:
            given = declarations.check_mapping(given, declared[nb.stem], f"notebook {nb.stem}")
            if params is not None:
                fields = declarations.declared(params)
                params(**{k: v for k, v in given.items() if k in fields}).validate()
        except InputError as exc:
            raise InputError(f"{nb.stem}: {exc}") from None
    return chosen


def _one_line_error(exc: Exception) -> str:
    """What went wrong in a notebook, in one line: the exception's type and message."""
    name, value = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{name}: {value}" if name else (f"{type(exc).__name__}: {exc}")
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _short_error(exc: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # papermill's tracebacks carry terminal colours
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-12:])


# Scripts nbconvert's template loads from a CDN (require.js, MathJax): the notebooks need
# neither, and a report must open offline, so they are left out.
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>', re.I)


def export_html(executed: Path) -> Path:
    """A self-contained HTML copy beside the notebook: plots embedded as data URIs, no
    script or style loaded from the network."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(executed), as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb)
    body = _REMOTE_SCRIPT.sub("", body)
    out = Path(executed).with_suffix(".html")
    out.write_text(body)
    return out


def run_all(
    names,
    parameters: dict | None,
    out_dir: Path,
    data_dir: Path,
    smoke: bool = False,
    progress: bool = True,
    log=print,
    directory: Path = NOTEBOOKS_DIR,
    verbose: bool = False,
) -> list[NotebookRun]:
    """Check the request (`check`: nothing runs if a name or value is wrong), execute the
    chosen notebooks one after the other into OUT_DIR, their tables into DATA_DIR, and
    write the index page and batch.json (`batchfile`) there."""
    chosen = check(names, parameters or {}, smoke, directory)
    params = dict(parameters or {})
    if smoke:
        params["smoke"] = True
    runs = []
    t0 = time.monotonic()
    with interrupts_reach_the_kernel() as stop:
        for i, nb in enumerate(chosen, 1):
            log(f"[{i}/{len(chosen)}] {nb.stem} ...")
            r = execute(nb, params, out_dir, data_dir, progress, verbose)
            log(
                f"[{i}/{len(chosen)}] {nb.stem}: {'ok' if r.ok else 'FAILED'} in {r.seconds:.0f} s"
                + (f": {r.error}\n  the executed notebook, with the traceback: {r.executed}" if r.error else "")
            )
            runs.append(r)
            if stop.signal:
                log(
                    f"stopped by signal {stop.signal}: the notebook's kernel undid its kernel state; "
                    f"{len(chosen) - i} notebook(s) not run"
                )
                break
    log(f"{len(runs)} notebooks in {time.monotonic() - t0:.0f} s")
    path = write_index(runs, out_dir, data_dir)
    batchfile.write(runs, out_dir)
    log(f"index: {path}")
    return runs
