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

from ..config.settings import CatalogSettings, InstrumentProfile, PipelineSettings, TemplateSettings


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


class StageSettings(BaseModel):
    """The typed settings a stage receives: everything it may depend on, nothing of the daemon."""

    model_config = ConfigDict(extra="forbid")
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    template: TemplateSettings = Field(default_factory=TemplateSettings)
    instrument: InstrumentProfile | None = None
    offline: bool = True
    cache_dir: Path = Path("var/cache")
    regions: list[Region] = Field(default_factory=list)

    @classmethod
    def from_settings(cls, settings, instrument: InstrumentProfile | None = None,
                      regions: list[Region] | None = None, **pipeline_overrides: Any) -> "StageSettings":
        pipeline = settings.pipeline
        if instrument is not None and instrument.pipeline:
            pipeline = pipeline.model_validate({**pipeline.model_dump(), **instrument.pipeline})
        if pipeline_overrides:
            pipeline = pipeline.model_validate({**pipeline.model_dump(), **pipeline_overrides})
        return cls(pipeline=pipeline, catalog=settings.catalog, template=settings.template,
                   instrument=instrument, offline=settings.offline, cache_dir=settings.paths.cache,
                   regions=regions or [])


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
