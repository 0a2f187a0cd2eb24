"""The `[store]` section: what the measurement store keeps and how candidates are followed across
frames (stdd/store/measurements.py, stdd/candidates/). Its own module: settings.py holds the
sections every daemon needs; this one grows with the store."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="record every done frame's measurements by sky position (light "
                                            "curves, candidate histories)")
    objects_min_snr: float = Field(5.0, ge=0, description="calibrated objects kept: S/N at least this (the "
                                                         "database grows with it: ~70 bytes an object)")
    candidate_radius_arcsec: float = Field(
        0.0, ge=0, description="detections of one candidate lie within this of it; 0 = the frame's FWHM (at "
                               "least 1.5″)")
    moving_max_hours: float = Field(6.0, gt=0, description="single detections this close in time may be one "
                                                           "moving object")
    moving_max_rate_arcsec_per_hour: float = Field(
        3600.0, gt=0, description="fastest apparent motion linked (1°/h covers near-Earth objects)")
    variable_catalogs: list[Path] = Field(
        default_factory=list, description="local catalogue files of variable stars (VSX, GCVS, ...; columns "
                                          "RAJ2000/DEJ2000 or ra/dec, optional name): a candidate on one is a "
                                          "`known variable`")
    proper_motion_catalogs: list[Path] = Field(
        default_factory=list, description="local catalogue files with proper motions (columns ra/dec or "
                                          "RAJ2000/DEJ2000, pmRA/pmDE or pmra/pmdec in mas/yr, optional epoch "
                                          "in years, default 2016.0): a candidate on a star moving at least "
                                          "`high_proper_motion_mas` is `high proper motion`")
    high_proper_motion_mas: float = Field(100.0, gt=0, description="mas/yr")
    catalog_match_arcsec: float = Field(2.0, gt=0, description="candidate–catalogue match radius")


class StackSettings(BaseModel):
    """The `[stack]` section: stacking sequences automatically in the daemon (stdd/stack/,
    stdd/daemon/stacking.py). `stdd stack` uses `method`, `subtract_bg` and `mask_cosmics` too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="stack sequences of done frames automatically when they close")
    method: str = Field("sum", pattern="^(sum|clipped_mean|median)$",
                        description="sum (STDWeb's default) / clipped_mean / median")
    subtract_bg: bool = Field(True, description="remove each input's background first (STDWeb: stack_subtract_bg)")
    mask_cosmics: bool = Field(False, description="mask cosmic rays in each input first (STDWeb: stack_mask_cosmics)")
    max_gap_minutes: float = Field(10.0, gt=0, description="frames of one field and filter no further apart than "
                                                          "this are one sequence; it closes this long after its "
                                                          "last frame")
    close_after_minutes: float | None = Field(
        None, gt=0, description="a sequence closes once none of its frames has finished processing for this long "
                                "(default: max_gap_minutes)")
    min_frames: int = Field(3, ge=2, description="fewer frames in a closed sequence: no stack")
    max_frames: int = Field(20, ge=2, description="a longer sequence is stacked in parts of at most this many")
    field_radius_arcmin: float = Field(5.0, gt=0, description="frames whose centres are this close are one field")
    alert_regions: bool = Field(True, description="frames covering one alert's region are one field, wherever "
                                                  "they point")
