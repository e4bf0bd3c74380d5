"""Config helpers shared by every stage: YAML/JSON loading with unknown keys refused, hashing, saving.

Each concern (decoding, the trace job, training, evaluation) defines its own plain ``@dataclass``
in its own module, every field with a default and a one-line comment, ranges checked in
``__post_init__``. This module only moves those dataclasses to and from files:

- ``load_yaml_config(cls, source, **overrides)``: build ``cls`` from a YAML/JSON file or a dict,
  then apply keyword overrides; keys ``cls`` does not declare are refused with a message listing
  them and the known keys (a typo must never fall back silently to a default).
- ``config_to_dict(cfg)``: JSON-ready dict (tuples -> lists, paths -> str, nested dataclasses).
- ``config_hash(cfg)``: first 12 hex digits of the sha256 of the sorted, compact JSON of the dict;
  stable across runs and processes, changes whenever any value changes.
- ``save_config(cfg, path)``: written next to the outputs it produced (``.json`` or ``.yaml``).
- ``stored_config_matches(cfg, path)``: lets an expensive stage skip work already done with the
  same config (the ``force`` parameter of a notebook redoes it).

Light coercion happens while loading, because YAML is loose: PyYAML reads ``1e-5`` as a string
(YAML 1.1 wants ``1.0e-5``), so a string given to a ``float`` field is parsed as a float, an int
given to a ``float`` field becomes a float, and a list given to a ``tuple`` field becomes a tuple.
Nothing else is converted; ranges are the dataclass's own business.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")

__all__ = [
    "load_yaml_config",
    "config_to_dict",
    "config_hash",
    "save_config",
    "read_config_file",
    "stored_config_matches",
    "check_number",
]


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON file holding one mapping (an empty file reads as ``{}``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return dict(data)


def check_number(owner: str, key: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False, integer: bool = False) -> Any:
    """``value`` when it is a finite number (an int when ``integer``) in range, else ValueError naming ``owner.key``.

    Booleans and strings are refused (YAML's ``.nan``, ``"abc"`` and ``true`` are not thresholds).
    """
    import math
    import numbers

    kind = "an integer" if integer else "a finite number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    ok = ok_type and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
        if maximum is not None:
            bounds.append(f"<= {maximum:g}")
        raise ValueError(f"{owner}.{key} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}, got {value!r}")
    return value


def _field_types(cls) -> dict[str, Any]:
    """Resolved type hints of a dataclass (strings under ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolved forward references: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _is_type(hint: Any, target: type) -> bool:
    """True when ``hint`` is ``target`` or ``target | None`` (or the string spelling of either)."""
    if hint is target:
        return True
    if isinstance(hint, str):
        parts = {p.strip() for p in hint.split("|")}
        return target.__name__ in parts and parts <= {target.__name__, "None"}
    args = typing.get_args(hint)
    return bool(args) and target in args and all(a in (target, type(None)) for a in args)


def _is_tuple(hint: Any) -> bool:
    if isinstance(hint, str):
        return hint.startswith("tuple")
    origin = typing.get_origin(hint)
    if origin is tuple or hint is tuple:
        return True
    return any(typing.get_origin(a) is tuple or a is tuple for a in typing.get_args(hint))


def _coerce(name: str, hint: Any, value: Any, cls_name: str) -> Any:
    if value is None:
        return value
    if _is_type(hint, float) and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{cls_name}.{name}: expected a number, got {value!r}") from None
    if _is_tuple(hint) and isinstance(value, list):
        return tuple(value)
    return value


def _build(cls: type[T], values: Mapping[str, Any]) -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} key(s): {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    hints = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints.get(name)
        nested = _nested_dataclass(fields[name], hint)
        if nested is not None and isinstance(value, Mapping):
            kwargs[name] = _build(nested, value)
        else:
            kwargs[name] = _coerce(name, hint, value, cls.__name__)
    return cls(**kwargs)


def _nested_dataclass(f: dataclasses.Field, hint: Any) -> type | None:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory, type):
        if dataclasses.is_dataclass(f.default_factory):
            return f.default_factory
    return None


def load_yaml_config(cls: type[T], path_or_dict: str | Path | Mapping | None = None, **overrides) -> T:
    """Build the dataclass ``cls`` from a YAML/JSON file (or a dict), then apply ``overrides``.

    >>> load_yaml_config(TrainConfig, "params/demo/train.yaml", epochs=2)  # doctest: +SKIP

    Unknown keys (in the file or in the overrides) raise ``ValueError`` naming them and listing the
    known keys. Values are validated by ``cls.__post_init__``.
    """
    if path_or_dict is None:
        values: dict = {}
    elif isinstance(path_or_dict, Mapping):
        values = dict(path_or_dict)
    else:
        values = read_config_file(path_or_dict)
    values.update(overrides)
    if isinstance(path_or_dict, (str, Path)):
        try:
            return _build(cls, values)
        except (ValueError, TypeError) as err:  # name the file the bad key came from
            raise ValueError(f"{path_or_dict}: {err}") from None
    return _build(cls, values)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def config_to_dict(cfg: Any) -> dict:
    """JSON-ready dict of a dataclass instance (or a mapping): tuples -> lists, paths -> str."""
    if isinstance(cfg, Mapping):
        return _jsonable(cfg)
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"expected a dataclass instance or a mapping, got {type(cfg).__name__}")
    return _jsonable(cfg)


def config_hash(cfg: Any, exclude: tuple[str, ...] | list[str] = ()) -> str:
    """Stable 12-hex-digit id of a config: sha256 of its sorted compact JSON (``exclude`` drops keys)."""
    data = config_to_dict(cfg)
    for key in exclude:
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the config as YAML (``.yaml``/``.yml``) or JSON (anything else); returns the path.

    The file holds exactly the dataclass fields, so ``load_yaml_config(cls, path)`` reads it back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    if path.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def stored_config_matches(cfg: Any, path: str | Path, exclude: tuple[str, ...] | list[str] = ()) -> bool:
    """True when ``path`` exists and holds a config with the same hash as ``cfg``."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        stored = read_config_file(path)
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return config_hash(stored, exclude) == config_hash(cfg, exclude)
