"""Reading, validating and resolving the config file, once.

`load_settings(path)` returns a `Settings` whose paths are absolute (relative ones resolved
against the config file's folder) or raises `ConfigError` listing every problem, each naming
the file, the key path and what was expected.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .settings import InstrumentProfile, Settings

ENV_CONFIG = "STDD_CONFIG"
DEFAULT_CONFIG_NAME = "stdd.toml"


class ConfigError(Exception):
    """A config that cannot be used. `errors` holds one readable line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__("\n".join(errors))


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a table",
    "path_type": "a path", "model_type": "a table", "model_attributes_type": "a table",
    "extra_forbidden": None, "literal_error": None, "missing": None,
}


def _format_errors(source: str, exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{source}: {loc}: unknown key (not a setting stdd knows)")
        elif kind == "missing":
            lines.append(f"{source}: {loc}: required key is missing")
        else:
            expected = _TYPE_WORDS.get(kind)
            got = err.get("input")
            got_s = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 60 else type(got).__name__
            if expected:
                lines.append(f"{source}: {loc}: expected {expected}, got {got_s}")
            else:
                lines.append(f"{source}: {loc}: {err['msg']} (got {got_s})")
    return lines


def default_config_path() -> Path:
    env = os.environ.get(ENV_CONFIG)
    return Path(env) if env else Path.cwd() / DEFAULT_CONFIG_NAME


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), [f"{path}: config file not found"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"{path}: not valid TOML: {e}"]) from None
    except OSError as e:
        raise ConfigError(str(path), [f"{path}: cannot read: {e}"]) from None


def _resolve_paths(model: BaseModel, base: Path) -> None:
    """Make every Path field absolute against `base`, in place, recursively."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path):
            if not value.is_absolute():
                object.__setattr__(model, name, (base / value).resolve())
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)
        elif isinstance(value, list):
            new = []
            for item in value:
                if isinstance(item, Path) and not item.is_absolute():
                    item = (base / item).resolve()
                elif isinstance(item, BaseModel):
                    _resolve_paths(item, base)
                new.append(item)
            object.__setattr__(model, name, new)
        elif isinstance(value, dict):
            for item in value.values():
                if isinstance(item, BaseModel):
                    _resolve_paths(item, base)


def settings_from_dict(data: dict[str, Any], source: str = "<config>", base: Path | None = None) -> Settings:
    try:
        settings = Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _format_errors(source, e)) from None
    _resolve_paths(settings, (base or Path.cwd()).resolve())
    return settings


def load_settings(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load, validate and resolve a config file. `overrides` are dotted keys (from `-c key=value`)."""
    path = Path(path) if path is not None else default_config_path()
    data = read_toml(path)
    if overrides:
        data = apply_overrides(data, overrides, str(path))
    settings = settings_from_dict(data, str(path), path.parent)
    settings._source_file = path.resolve()
    return settings


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a TOML value (strings may be bare). Raises ValueError with the reason."""
    if "=" not in text:
        raise ValueError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ValueError(f"empty key in {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Set dotted keys in a copy of `data`. A bare key is looked up in [pipeline] first."""
    import copy

    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) == 1 and parts[0] not in Settings.model_fields:
            parts = ["pipeline", parts[0]]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(source, [f"-c {dotted}: {p} is not a table"])
        node[parts[-1]] = value
    return out


def load_instrument(settings: Settings, name: str) -> InstrumentProfile:
    """Load `config/instruments/<name>.toml` (or a path)."""
    path = Path(name)
    if not path.suffix:
        path = settings.instruments_dir / f"{name}.toml"
    data = read_toml(path)
    data.setdefault("name", path.stem)
    try:
        profile = InstrumentProfile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(str(path), _format_errors(str(path), e)) from None
    _resolve_paths(profile, path.parent.resolve())
    return profile


def list_instruments(settings: Settings) -> list[Path]:
    d = settings.instruments_dir
    return sorted(d.glob("*.toml")) if d.is_dir() else []


def settings_as_json(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="json")
