"""The normalised alert: what every notice format is parsed into.

Design note: one flat model for all formats (VOEvent 1.1/2.0, GCN JSON notices, LVK
igwn.gwalert, classic text, control packets) so that policy, storage and the daemon never
look at a format. Facts the notice states are kept as stated (`region` with its own
containment); derived numbers (`error_radius_deg`, the 90 % circle-equivalent radius) are
computed once here. Whatever a format carries beyond the model stays in `extra`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .region import ALL_SKY_RADIUS_DEG, Circle, Ellipse, Polygon, Skymap, region_to_dict

Role = Literal["observation", "test", "mock", "control"]
ROLES = ("observation", "test", "mock", "control")


class NoticeError(ValueError):
    """The bytes are not a notice stdd can read (garbage, truncated, unknown format)."""


@dataclass
class Alert:
    id: str                                   # unique per notice: IVORN, or a stable key built from the notice
    mission: str | None = None
    instrument: str | None = None
    notice_type: str | None = None            # classic name (SWIFT_BAT_GRB_POS_ACK), LVK alert type, JSON family
    alert_type: str | None = None             # initial / update / retraction / PRELIMINARY / ...
    role: Role = "observation"
    role_reason: str | None = None            # why the role is not "observation"
    format: str = "unknown"                   # voevent | json | gwalert | text | control
    topic: str | None = None
    ivorn: str | None = None
    event_id: str | None = None               # the trigger / superevent this notice is about
    event_name: str | None = None
    time: str | None = None                   # event (trigger) time, ISO 8601 UTC
    created: str | None = None                # when the notice was written
    ra: float | None = None
    dec: float | None = None
    stated_error_deg: float | None = None     # the error radius as stated (0, negative: no localisation); None: none
    exact_position: str | None = None         # why a position without an error is exact (catalogued source, ...)
    region: Circle | Ellipse | Polygon | None = None
    skymap: Skymap | None = None
    skymap_url: str | None = None
    skymap_error: str | None = None           # why an included skymap could not be decoded
    retraction: bool = False
    retracts: str | None = None               # event id this notice retracts
    classification: dict[str, float] = field(default_factory=dict)
    most_likely_class: str | None = None
    not_astrophysical: str | None = None      # reason when the source is classified as non-astrophysical
    flags: list[str] = field(default_factory=list)
    significance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    credible_level: float = 0.9

    # -- derived ---------------------------------------------------------------------------
    @property
    def error_radius_deg(self) -> float | None:
        """90 % circle-equivalent radius of the localisation (skymap area when there is one)."""
        if self.skymap is not None:
            return self.skymap.radius90(self.credible_level)
        if self.region is not None:
            return self.region.radius90
        return None

    @property
    def has_skymap(self) -> bool:
        return self.skymap is not None

    @property
    def has_position(self) -> bool:
        return self.skymap is not None or (self.ra is not None and self.dec is not None)

    @property
    def all_sky(self) -> bool:
        r = self.error_radius_deg
        return r is not None and r >= ALL_SKY_RADIUS_DEG

    def region_dict(self) -> dict | None:
        """The localisation as stored for live regions (skymap credible area wins over a circle)."""
        if self.skymap is not None:
            return region_to_dict(self.skymap, self.credible_level)
        if self.region is not None:
            return region_to_dict(self.region)
        return None  # a position without an error region (or none at all): nothing to match frames against

    def to_dict(self, *, actionable: bool | None = None, ignore_reason: str | None = None) -> dict[str, Any]:
        """The JSON form (`stdd alert parse --json`, action payloads, the alerts table)."""
        region = self.region.to_dict() if self.region is not None else None
        skymap = None
        if self.skymap is not None:
            skymap = self.skymap.summary(self.credible_level)
        d: dict[str, Any] = {
            "id": self.id,
            "mission": self.mission,
            "instrument": self.instrument,
            "notice_type": self.notice_type,
            "alert_type": self.alert_type,
            "role": self.role,
            "role_reason": self.role_reason,
            "format": self.format,
            "topic": self.topic,
            "ivorn": self.ivorn,
            "event_id": self.event_id,
            "event_name": self.event_name,
            "retraction": self.retraction,
            "retracts": self.retracts,
            "time": self.time,
            "created": self.created,
            "ra": _num(self.ra),
            "dec": _num(self.dec),
            "error_radius_deg": _num(self.error_radius_deg),
            "stated_error_deg": _num(self.stated_error_deg),
            "exact_position": self.exact_position,
            "region": region,
            "has_skymap": self.has_skymap,
            "skymap": skymap,
            "skymap_url": self.skymap_url,
            "skymap_error": self.skymap_error,
            "classification": self.classification,
            "most_likely_class": self.most_likely_class,
            "not_astrophysical": self.not_astrophysical,
            "flags": list(self.flags),
            "significance": self.significance,
            "extra": self.extra,
        }
        if actionable is not None:
            d["actionable"] = actionable
            d["ignore_reason"] = ignore_reason
        return d


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
