"""What the live labs' widgets share: status lines, tables of counters, and turning every
control off with the reason when a lab stops. ipywidgets is imported only when a widget is
built, so the labs themselves work (and are tested) without it.
"""
from __future__ import annotations

import html

from labkit.errors import LabkitError


def widgets():
    try:
        import ipywidgets
    except ImportError:
        raise LabkitError("ipywidgets is not installed in this environment: `sudo make setup` installs it") from None
    return ipywidgets


def status_html(text: str, ok: bool = True) -> str:
    """One line of status: green for what happened, red for what was refused or failed."""
    color = "#070" if ok else "#b00"
    return f"<span class='lk-status-{'ok' if ok else 'error'}' style='color:{color}'>{html.escape(text)}</span>"


def table_html(rows: list[dict], empty: str) -> str:
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    cols = list(rows[0])
    head = "".join(f"<th style='text-align:right;padding:0 8px'>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td style='text-align:right;padding:0 8px'>{html.escape(str(r[c]))}</td>"
                                     for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def disable_all(controls, reason: str) -> None:
    """Turn every control off; hovering one shows why."""
    for c in controls:
        c.disabled = True
        if hasattr(c, "tooltip"):
            c.tooltip = reason


def describe(exc: BaseException) -> str:
    """An error as one line for the widget: labkit's own errors say what to do already;
    anything else gets its type, so it is not mistaken for a refused value."""
    if isinstance(exc, LabkitError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
