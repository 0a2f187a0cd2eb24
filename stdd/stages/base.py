"""What every stage takes and returns.

A stage is `run(folder: Path, settings: StageSettings) -> StageResult`. It knows astronomy and
nothing of queues, processes or the database: the same call runs from `stdd process`, in a
pool worker, or on a Dask worker. It reads the products of earlier stages from `folder`,
removes its own and later stages' products before it starts, writes its products atomically,
and logs to `<stage>.log` in the folder. A failure is a `StageError` carrying a specific reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config.frame_options import apply_sections
from ..config.settings import (CalibrationSettings, CatalogSettings, InstrumentProfile, PipelineSettings,
                               TemplateSettings)


class StageError(Exception):
    """The stage cannot produce its result; the message says why, specifically."""


class Region(BaseModel):
    """A sky region handed to the stages (e.g. a live alert's error circle)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    ra: float
    dec: float
    radius_deg: float
    forced_photometry: bool = False
    moc: str | None = None  # optional multi-order coverage, as a MOC ASCII string


ProfileSource = Literal["folder", "explicit", "header match", "configured default", "none"]


class ProfileChoice(BaseModel):
    """The instrument profiles a frame's own process chooses from (`stdd.stages.profiles.choose`):
    `fixed` when the folder (or `--profile`) decided, else the first of `by_header` whose `match`
    table fits the frame's header, else `default` (`pipeline.instrument`), else none."""

    model_config = ConfigDict(extra="forbid")
    fixed: InstrumentProfile | None = None
    fixed_source: Literal["folder", "explicit"] | None = None
    by_header: list[InstrumentProfile] = Field(default_factory=list)
    default: InstrumentProfile | None = None
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="explicit pipeline keys: they win over the chosen profile's")

    def candidates(self) -> list[InstrumentProfile]:
        return [p for p in (self.fixed, *self.by_header, self.default) if p is not None]


class StageSettings(BaseModel):
    """The typed settings a stage receives: everything it may depend on, nothing of the daemon.

    `instrument` is the profile applied, `instrument_source` why it was chosen. While
    `profile_choice` is set the profile is still to be chosen by the frame's header: `run_chain`
    settles it (`stdd.stages.profiles.settle`) before the first stage, so stages never see it.
    """

    model_config = ConfigDict(extra="forbid")
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    template: TemplateSettings = Field(default_factory=TemplateSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    instrument: InstrumentProfile | None = None
    instrument_source: ProfileSource | None = None
    profile_choice: ProfileChoice | None = None
    offline: bool = True
    cache_dir: Path = Path("var/cache")
    regions: list[Region] = Field(default_factory=list)
    frame_options: dict[str, Any] = Field(
        default_factory=dict, description="the frame's own settings (stdd.config.frame_options), as given: "
                                          "recorded in result.json; already applied to the sections above")

    @classmethod
    def from_settings(cls, settings, instrument: InstrumentProfile | None = None,
                      regions: list[Region] | None = None, *, profiles: ProfileChoice | None = None,
                      frame_options: dict[str, Any] | None = None, **pipeline_overrides: Any) -> "StageSettings":
        """`instrument`: a profile applied now; or `profiles`: candidates the frame's process chooses
        from. Either way `pipeline_overrides` (and `frame_options`' pipeline keys, the frame's own
        settings, normalised by stdd.config.frame_options) win over the profile's `[pipeline]`
        table; every candidate's merge is validated here, so settling cannot fail later."""
        if frame_options:
            settings = apply_sections(settings, frame_options)
            pipeline_overrides = {**(frame_options.get("pipeline") or {}), **pipeline_overrides}
        pipeline = settings.pipeline
        if instrument is not None and instrument.pipeline:
            pipeline = pipeline.model_validate({**pipeline.model_dump(), **instrument.pipeline})
        if pipeline_overrides:
            pipeline = pipeline.model_validate({**pipeline.model_dump(), **pipeline_overrides})
        if profiles is not None:
            profiles = profiles.model_copy(update={"overrides": dict(pipeline_overrides)})
            for prof in profiles.candidates():
                merge_profile_pipeline(pipeline, prof, profiles.overrides)
        return cls(pipeline=pipeline, catalog=settings.catalog, template=settings.template,
                   calibration=settings.calibration,
                   instrument=instrument, instrument_source="explicit" if instrument is not None else None,
                   profile_choice=profiles, offline=settings.offline, cache_dir=settings.paths.cache,
                   regions=regions or [], frame_options=dict(frame_options or {}))

    def with_profile(self, profile: InstrumentProfile | None, source: ProfileSource) -> "StageSettings":
        """These settings with `profile` applied (its `[pipeline]`, then the explicit overrides) and
        the choice settled."""
        overrides = self.profile_choice.overrides if self.profile_choice else {}
        pipeline = merge_profile_pipeline(self.pipeline, profile, overrides) if profile else self.pipeline
        return self.model_copy(update={"pipeline": pipeline, "instrument": profile, "instrument_source": source,
                                       "profile_choice": None})


def merge_profile_pipeline(pipeline: PipelineSettings, profile: InstrumentProfile,
                           overrides: dict[str, Any] | None = None) -> PipelineSettings:
    """`pipeline` with the profile's `[pipeline]` table applied, then `overrides` (which win).
    Raises pydantic's ValidationError when the result is not valid settings."""
    if not profile.pipeline:
        return pipeline
    return pipeline.model_validate({**pipeline.model_dump(), **profile.pipeline, **(overrides or {})})


class StageResult(BaseModel):
    """What a stage reports. `summary` keys are merged into result.json (see README)."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    state: Literal["done", "failed", "skipped"] = "done"
    error: str | None = None
    seconds: float | None = None
    summary: dict[str, Any] = Field(default_factory=dict)
    products: list[str] = Field(default_factory=list, description="files to publish, relative to the folder")
    notes: list[str] = Field(default_factory=list, description="recorded outcomes: degraded sources, warnings")
