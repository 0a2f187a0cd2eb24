"""Per-frame settings: what one frame may set for itself, checked once, before it is queued.

A frame's options come from `stdd submit -c key=value --target … --profile …`, `POST /frames
{"options": {…}}`, `stdd retry ID -c …` or `stdd process -c …`. Keys are written as in `-c`:
dotted (`catalog.source`, `template.file`) or bare, a bare key being a `[pipeline]` key. Only the
sections that describe how one frame is measured may be set per frame (`PER_FRAME_SECTIONS`);
the daemon's own sections (paths, pool, http, alerts, …) are refused with the key named.

Design note: options are kept in their normalised form `{"pipeline": {...}, "catalog": {...},
"template": {...}, "profile": name}` in the frame's row, and validated here against the sections
they override, so a bad key or value is an error naming it at submit time (HTTP 400, exit 2),
never a frame that fails later. The effective settings a frame ran with (config, profile and
these options merged) are written into its result.json by the pipeline (`settings`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from .settings import CatalogSettings, PipelineSettings, Settings, TemplateSettings

PER_FRAME_SECTIONS: dict[str, type[BaseModel]] = {
    "pipeline": PipelineSettings, "catalog": CatalogSettings, "template": TemplateSettings,
}
#: top-level option keys that are not settings sections
OPTION_KEYS = ("profile",)


class FrameOptionError(ValueError):
    """A per-frame option that cannot be used; `key` is the option as written."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def split_key(key: str) -> tuple[str, str]:
    """(section, field) of an option key as written with -c; a bare key is a pipeline key."""
    key = key.strip()
    if "." not in key:
        if key in Settings.model_fields and key not in PER_FRAME_SECTIONS:
            raise FrameOptionError(key, "is not a per-frame setting (set it in the config file)")
        return "pipeline", key
    section, field = key.split(".", 1)
    if section not in PER_FRAME_SECTIONS:
        raise FrameOptionError(key, f"[{section}] is not a per-frame section; a frame may set "
                                    f"{', '.join(PER_FRAME_SECTIONS)} keys")
    if "." in field:
        raise FrameOptionError(key, "nested keys are not per-frame settings")
    return section, field


def normalize(raw: Mapping[str, Any] | None, base: Settings | None = None) -> dict[str, Any]:
    """Options as given (flat `-c` keys, or already normalised sections) → the normalised form,
    validated against `base` (the daemon's settings; defaults when None). Raises FrameOptionError
    naming the first bad key. Relative paths are refused: the daemon has no working folder of the
    caller's (the CLI makes them absolute before sending)."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if not isinstance(key, str) or not key.strip():
            raise FrameOptionError(str(key), "an option key must be a non-empty string")
        if key in OPTION_KEYS:
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise FrameOptionError(key, "must be an instrument profile name")
            if value:
                out[key] = value.strip()
            continue
        if key in PER_FRAME_SECTIONS and isinstance(value, Mapping):
            for field, v in value.items():
                out.setdefault(key, {})[split_key(f"{key}.{field}")[1]] = v
            continue
        section, field = split_key(key)
        out.setdefault(section, {})[field] = value
    validate(out, base)
    return out


def validate(options: Mapping[str, Any], base: Settings | None = None) -> None:
    """Check normalised options against the sections they override; FrameOptionError names the key."""
    base = base or Settings()
    for section, model in PER_FRAME_SECTIONS.items():
        values = options.get(section)
        if not values:
            continue
        if not isinstance(values, Mapping):
            raise FrameOptionError(section, "must be a table of settings")
        for field, value in values.items():
            if field not in model.model_fields:
                raise FrameOptionError(f"{section}.{field}" if section != "pipeline" else field,
                                       f"unknown key (no such setting in [{section}])")
            if _is_path_field(model, field) and value is not None and not _absolute(value):
                raise FrameOptionError(_label(section, field), f"must be an absolute path, got {value!r}")
        current = getattr(base, section).model_dump()
        try:
            model.model_validate({**current, **values})
        except ValidationError as e:
            err = e.errors()[0]
            loc = [str(x) for x in err["loc"]]
            key = _label(section, loc[0]) if loc else section
            raise FrameOptionError(key, err["msg"]) from None


def apply_sections(settings: Settings, options: Mapping[str, Any] | None) -> Settings:
    """`settings` with the options' catalog and template keys applied (pipeline keys are applied
    by `StageSettings.from_settings`, over the instrument profile's)."""
    update = {}
    for section in ("catalog", "template"):
        values = (options or {}).get(section)
        if values:
            current = getattr(settings, section)
            update[section] = type(current).model_validate({**current.model_dump(), **values})
    return settings.model_copy(update=update) if update else settings


def merge(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[str, Any]:
    """Normalised options `old` with `new`'s keys winning (a rerun's `-c` on a frame's options)."""
    out: dict[str, Any] = {}
    for src in (old or {}, new or {}):
        for key, value in src.items():
            if key in PER_FRAME_SECTIONS:
                out.setdefault(key, {}).update(value)
            else:
                out[key] = value
    return out


def path_fields(section: str) -> set[str]:
    """The keys of a per-frame section that hold paths (the CLI makes them absolute)."""
    model = PER_FRAME_SECTIONS[section]
    return {name for name in model.model_fields if _is_path_field(model, name)}


def _label(section: str, field: str) -> str:
    return field if section == "pipeline" else f"{section}.{field}"


def _is_path_field(model: type[BaseModel], field: str) -> bool:
    ann = str(model.model_fields[field].annotation)
    return "Path" in ann


def _absolute(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_absolute(v) for v in value)
    return Path(str(value)).is_absolute()
