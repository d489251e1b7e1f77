"""Parameters checked against their declarations, before anything runs.

An experiment declares its parameters once, as the fields of its `Params` dataclass (a
name, a type annotation, a default); a notebook declares its own in its `parameters`
cell (`trials: int = 3  # ...`). The same small checker serves both: a value must be of
the declared type, a name must be one of the declared names (with a did-you-mean), and
every message is one line that says what was wrong and what to write instead.

Types understood: bool, int, float (an int is accepted), str (a bare number is accepted as
its text: YAML reads `-p dpdk_lcores 1` as a number), list (one value is accepted as a
one-element list: `-p sizes 64` means [64]), dict, and `X | None`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing

from labkit.errors import InputError

_NAMES = {t.__name__: t for t in (bool, int, float, str, list, dict)} | {"tuple": list, "None": type(None)}
_WHAT = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text",
    list: "a list, e.g. [64, 512]",
    dict: "a mapping",
    type(None): "nothing (null)",
}


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'x'?)' for the closest of KNOWN, or ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_names(names, known, where: str) -> None:
    """Every one of NAMES is among KNOWN, else one line naming the first stranger, the
    closest known name and the whole list."""
    known = list(known)
    for name in names:
        if name not in known:
            raise InputError(
                f"{where} has no parameter {name!r}{did_you_mean(name, known)}; it declares: {', '.join(known)}"
            )


def kinds(annotation) -> tuple:
    """The plain types an annotation allows: `float | None` -> (float, NoneType)."""
    if isinstance(annotation, str):
        out = []
        for part in annotation.split("|"):
            part = part.strip()
            base = part.split("[", 1)[0].strip()
            if base.startswith("Optional"):
                out += [*kinds(part[len("Optional[") : -1]), type(None)]
            elif base in _NAMES:
                out.append(_NAMES[base])
            else:
                return ()  # a type this checker does not know: not checked
        return tuple(out)
    if annotation is None or annotation is type(None):
        return (type(None),)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(k for a in typing.get_args(annotation) for k in kinds(a))
    if origin is not None:
        annotation = origin
    if annotation is tuple:
        return (list,)
    return (annotation,) if annotation in _WHAT else ()


def check_value(name: str, value, annotation, example=dataclasses.MISSING):
    """VALUE as parameter NAME declared with ANNOTATION, normalised (a lone value for a
    list becomes a one-element list, a number for text its text); InputError otherwise."""
    allowed = kinds(annotation)
    if not allowed:
        return value
    if value is None and type(None) in allowed:
        return None
    is_bool = isinstance(value, bool)
    if bool in allowed and is_bool:
        return value
    if int in allowed and isinstance(value, int) and not is_bool:
        return value
    if float in allowed and isinstance(value, (int, float)) and not is_bool:
        return value
    if str in allowed and isinstance(value, str):
        return value
    if str in allowed and isinstance(value, (int, float)) and not is_bool:
        return str(value)
    if list in allowed and isinstance(value, (list, tuple)):
        return list(value)
    if list in allowed and value is not None and not isinstance(value, (dict, list, tuple)):
        return [value]
    if dict in allowed and isinstance(value, dict):
        return value
    want = " or ".join(_WHAT[k] for k in allowed)
    hint = "" if example is dataclasses.MISSING else f", e.g. {_yaml(example)} (the default)"
    raise InputError(f"{name} {value!r}: expected {want}{hint}")


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", "") if isinstance(value, list) else repr(value)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def declared(cls) -> dict:
    """{name: (annotation, default)} of a Params dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints.get(f.name, f.type), _default(f)) for f in dataclasses.fields(cls)}


def check_fields(params) -> None:
    """Check (and normalise, in place) every field of a Params instance against its
    annotation. Called first in each Params.validate, before range checks and smoke."""
    for name, (annotation, default) in declared(type(params)).items():
        setattr(params, name, check_value(name, getattr(params, name), annotation, default))


def check_mapping(values: dict, declarations: dict, where: str) -> dict:
    """VALUES against DECLARATIONS ({name: (annotation, default)}): names known, values of
    their type. Returns the normalised values."""
    check_names(values, declarations, where)
    return {k: check_value(k, v, *declarations[k]) for k, v in values.items()}


def check_interface(name: str | None, what: str) -> None:
    """A real interface named by a parameter exists in this (root) namespace: said before
    a testbed is built, with the interfaces there are."""
    import os

    if not name:
        return
    have = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []
    if name not in have:
        raise InputError(
            f"{what} {name!r}: no such interface here{did_you_mean(name, have)}; interfaces: {', '.join(have)}"
        )


def check_choice(name: str, value, choices, extra=()) -> None:
    """VALUE is one of CHOICES (or EXTRA, e.g. 'auto'), else one line with did-you-mean."""
    allowed = [*extra, *sorted(choices)]
    if value not in allowed:
        raise InputError(f"{name} {value!r}: choose one of {', '.join(allowed)}{did_you_mean(value, allowed)}")
