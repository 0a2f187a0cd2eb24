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
