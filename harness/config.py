"""Typed node configurations: a real ``fetalnode.config.Settings``, its fields set in Python, written as TOML.

The writer follows the dataclass fields, so a key added to the settings needs no change here:
a dataclass field is a ``[table]``, a list of dataclasses an array of tables ``[[name]]`` (nested ones
too: ``[[privacy.masks]]``), a ``dict[str, str]`` an inline table, and ``str``/``int``/``float``/``bool`` and
lists of them are values. An optional field (``bool | None``) left at ``None`` is not written (TOML has no
null). Strings are TOML basic strings with every character TOML forbids escaped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from fetalnode.config import DestinationSettings, Settings

NODE_AET = "FETALNODE"
MODALITY_AET = "DEMO-US"
# The DCMTK tools' own calling AE titles: a node made here answers them too.
TOOL_AETS = ("STORESCU", "ECHOSCU", "PRINTSCU")
SCALARS: tuple[type, ...] = (str, int, float, bool)
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def node_settings(
    *,
    port: int,
    data_dir: Path,
    orthanc_url: str,
    orthanc_username: str,
    password_file: Path,
    models_dir: Path,
    calling_aets: Sequence[str] = (MODALITY_AET, *TOOL_AETS),
) -> Settings:
    """The usual settings of a harness node: ``FETALNODE`` on 127.0.0.1:``port`` delivering to an Orthanc."""
    s = Settings()
    s.node.ae_title = NODE_AET
    s.node.host = "127.0.0.1"
    s.node.port = port
    s.node.data_dir = str(data_dir)
    s.scp.allowed_calling_aets = list(calling_aets)
    s.models.dir = str(models_dir)
    s.orthanc.url = orthanc_url
    s.orthanc.username = orthanc_username
    s.orthanc.password_file = str(password_file)
    return s


def orthanc_destination(settings: Settings, send: Sequence[str], name: str = "orthanc") -> DestinationSettings:
    """A ``[[destinations]]`` table of kind ``orthanc`` for the Orthanc of ``settings.orthanc``."""
    o = settings.orthanc
    return DestinationSettings(
        name=name, kind="orthanc", send=list(send), url=o.url, username=o.username, password_file=o.password_file
    )


def override(settings: Settings, **fields: Any) -> Settings:
    """Set ``section__key=value`` fields (``orthanc__retry_max=2.0``), type-checked against the dataclasses,
    and arrays of tables by their name (``destinations=[DestinationSettings(...)]``)."""
    for name, value in fields.items():
        hint = get_type_hints(Settings).get(name)
        if get_origin(hint) is list and dataclasses.is_dataclass(get_args(hint)[0]):
            if not isinstance(value, list) or not all(isinstance(v, get_args(hint)[0]) for v in value):
                raise TypeError(f"{name}: expected a list of {get_args(hint)[0].__name__}, got {value!r}")
            setattr(settings, name, value)
            continue
        section, sep, key = name.partition("__")
        sub = getattr(settings, section, None) if sep else None
        if sub is None or not dataclasses.is_dataclass(sub) or key not in {f.name for f in dataclasses.fields(sub)}:
            raise KeyError(f"{name}: no setting {section}.{key} (write section__key)")
        _check(value, get_type_hints(type(sub))[key], f"{section}.{key}")
        setattr(sub, key, value)
    return settings


def write_settings(settings: Settings, path: Path) -> Path:
    """Write ``settings`` to ``path`` as TOML that ``fetalnode.config.load_settings`` reads back equal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(settings), encoding="utf-8")
    return path


def to_toml(obj: Any) -> str:
    """A dataclass instance as a TOML document (its fields in declaration order, tables after values)."""
    return "".join(_table(obj, ())).lstrip("\n")


def _table(obj: Any, path: tuple[str, ...], header: str = "") -> list[str]:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"{'.'.join(path) or 'document'}: expected a dataclass instance, got {type(obj).__name__}")
    hints = get_type_hints(type(obj))
    values, tables = [header] if header else [], []
    for f in dataclasses.fields(obj):
        value, hint, where = getattr(obj, f.name), hints[f.name], (*path, f.name)
        if dataclasses.is_dataclass(hint):
            tables += _table(value, where, f"\n[{_dotted(where)}]\n")
        elif get_origin(hint) is list and dataclasses.is_dataclass(get_args(hint)[0]):
            if not isinstance(value, list):
                raise TypeError(f"{'.'.join(where)}: expected a list of {get_args(hint)[0].__name__}, got {value!r}")
            for item in value:
                tables += _table(item, where, f"\n[[{_dotted(where)}]]\n")
        elif value is None and type(None) in get_args(hint):
            continue
        else:
            _check(value, hint, ".".join(where))
            values.append(f"{_key(f.name)} = {_value(float(value) if hint is float else value)}\n")
    return values + tables


def _check(value: Any, hint: Any, where: str) -> None:
    """``value`` must be of the field's type (bool is not an int; an int is a float)."""
    if type(None) in get_args(hint):
        if value is not None:
            (inner,) = (a for a in get_args(hint) if a is not type(None))
            _check(value, inner, where)
        return
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise TypeError(f"{where}: expected {hint.__name__}, got {value!r}")
        return
    if get_origin(hint) is dict:
        key_type, item = get_args(hint)
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a table, got {value!r}")
        for k, v in value.items():
            _check(k, key_type, f"{where} key")
            _check(v, item, f"{where}.{k}")
        return
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        for i, v in enumerate(value):
            _check(v, item, f"{where}[{i}]")
        return
    if hint not in SCALARS:
        raise TypeError(f"{where}: cannot write a field of type {hint}")
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint) and not isinstance(value, bool)
    if not ok:
        raise TypeError(f"{where}: expected {hint.__name__}, got {value!r}")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(_value(v) for v in value) + "]"


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quote, backslash and control characters escaped."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"a lone surrogate (U+{code:04X}) cannot be written to TOML: {text!r}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else toml_string(name)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(p) for p in path)
