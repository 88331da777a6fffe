"""The one place the report (numerics/report.py, its one definition) becomes the wire's JSON
document and is read back (docs/design.md, "The wire contract"): the /v1/check answer, the
v2 ``report`` output, ``bncheck check --json``, the HTML report and the client all go
through here. Pure Python and NumPy: the CLI and the client use it without the server.

Rules: a dataclass becomes an object of its fields, in order; a field marked ``omitted``
(report.OMIT) is left out when it is None; a float that is not finite becomes null (JSON has
no NaN or Inf). Reading back ignores fields this version does not know (a newer server may
send more) and gives absent ones their defaults.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

from bncheck.numerics.report import OMIT, CheckReport

__all__ = ["document", "load", "to_json"]

T = TypeVar("T")
ARRAYS = ("gradients", "reference")  # the report's arrays: encoded by whoever knows the transport
_REPORT_FIELDS = frozenset(f.name for f in dataclasses.fields(CheckReport))


def to_json(value: Any, skip: tuple[str, ...] = ()) -> Any:
    """A report value as JSON-ready values (``skip``: top-level fields to leave out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name in skip or (item is None and f.metadata.get(OMIT)):
                continue
            out[f.name] = to_json(item)
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or Inf (documented per field)
    return value


def document(report: CheckReport, arrays: Mapping[str, Any] | None = None, notes: list[str] | None = None
             ) -> dict[str, Any]:
    """The report as JSON-ready values. ``arrays`` (gradients, reference: already encoded by the
    caller, who knows the transport) take their fields' places; ``notes`` add to the report's."""
    doc: dict[str, Any] = {}
    extra = tuple(f.name for f in dataclasses.fields(report) if f.name not in _REPORT_FIELDS)  # a subclass's own
    for key, value in to_json(report, skip=extra).items():
        if key in ARRAYS:
            if arrays and key in arrays:
                doc[key] = arrays[key]
            continue
        doc[key] = value
    for key in ARRAYS:  # asked for, though the report had none to place
        if arrays and key in arrays and key not in doc:
            doc[key] = arrays[key]
    doc["notes"] = list(doc.get("notes", [])) + list(notes or [])
    return doc


# ------------------------------------------------------------------ and back


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def load(cls: type[T], data: Mapping[str, Any], **given: Any) -> T:
    """A report dataclass from its JSON document; ``given`` fields are taken as they are (the
    caller's decoded arrays)."""
    hints = _hints(cls)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    missing = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in given:
            kwargs[f.name] = given[f.name]
        elif f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            missing.append(f.name)
    if missing:
        msg = f"{cls.__name__}: the document lacks {', '.join(missing)}"
        raise KeyError(msg)
    return cls(**kwargs)


def _value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        picked = next((a for a in options if dataclasses.is_dataclass(a) and isinstance(value, dict)), None)
        if picked is None:
            picked = next((a for a in options if typing.get_origin(a) in (list, dict)
                           and isinstance(value, typing.get_origin(a))), options[0])
        return _value(picked, value)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_value(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _value(item, v) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return load(hint, value)  # type: ignore[arg-type]
    return value
