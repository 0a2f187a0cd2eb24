"""Which alerts are acted on: intrinsic screening, configured rules, visibility from the site.

Design note: two layers. `screen(alert)` holds what no configuration may override — test and
mock notices, control packets and retractions never trigger an observation; neither does a
non-astrophysical classification, a missing position, a position that is no localisation
(localisation.py: error radius 0 or none, placeholder values) or an all-sky region. `Policy.decide`
then applies the configured rules in order (first match wins: missions, notice types and
roles as case-insensitive globs, a maximum 90 % error radius, visibility) and returns a
`Decision` with the rule's priority and action names. A retraction decides "cancel".

Visibility (astropy): over the next `visibility_window_hours`, sampled every 10 minutes,
is there a moment when the target is above the site's minimum altitude, the Sun below its
maximum altitude and the Moon at least `min_moon_separation` away? For a skymap the test
runs on up to 64 of the most probable cells of the credible region; any visible one counts.
IERS downloads are switched off: the bundled tables are accurate enough for altitudes.
"""
from __future__ import annotations

import fnmatch
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .localisation import localisation_problem
from .notice import Alert
from .region import angular_separation

VIS_STEP_MINUTES = 10.0
VIS_MAX_POINTS = 64


@dataclass
class Decision:
    act: bool
    kind: str  # observe | cancel | ignore | duplicate
    reason: str | None = None
    priority: int = 0
    rule: int | None = None
    actions: list[str] = field(default_factory=list)
    visibility: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def screen(alert: Alert) -> tuple[bool, str | None]:
    """(actionable, reason) for what no configuration overrides; visibility is not considered."""
    if alert.role == "control":
        return False, f"control packet ({alert.role_reason or alert.notice_type})"
    if alert.role in ("test", "mock"):
        return False, f"{alert.role} notice ({alert.role_reason})" if alert.role_reason else f"{alert.role} notice"
    if alert.retraction:
        return False, f"retraction of {alert.retracts or 'an earlier notice'}"
    if alert.not_astrophysical:
        return False, alert.not_astrophysical
    problem = localisation_problem(alert)
    if problem:
        return False, problem
    if not alert.has_position:
        why = "no usable position"
        if alert.skymap_error:
            why += f" ({alert.skymap_error})"
        elif alert.skymap_url:
            why += f" (skymap given only as a URL: {alert.skymap_url})"
        return False, why
    if alert.all_sky:
        return False, f"all-sky localisation (90 % radius {alert.error_radius_deg:.0f} deg)"
    return True, None


def _match(patterns: list[str], value: str | None) -> bool:
    value = (value or "").lower()
    return any(fnmatch.fnmatchcase(value, p.lower()) for p in patterns)


class Policy:
    def __init__(self, alerts_settings, site_settings):
        self.cfg = alerts_settings
        self.site = site_settings

    def decide(self, alert: Alert, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        if alert.retraction and alert.role == "observation":
            return Decision(False, "cancel", f"retraction of {alert.retracts or 'an earlier notice'}")
        ok, why = screen(alert)
        if not ok:
            return Decision(False, "ignore", why)
        reason = "no policy rule matches"
        vis_cache: dict[str, Any] | None = None
        for i, rule in enumerate(self.cfg.rules):
            if not (_match(rule.missions, alert.mission) and _match(rule.roles, alert.role)
                    and (_match(rule.notice_types, alert.notice_type) or _match(rule.notice_types, alert.alert_type))):
                continue
            radius = alert.error_radius_deg
            if rule.max_error_radius_deg is not None and radius is not None and radius > rule.max_error_radius_deg:
                reason = f"error radius {radius:.3g} deg is larger than {rule.max_error_radius_deg:g} (rule {i})"
                continue
            if rule.require_visible:
                if vis_cache is None:
                    vis_cache = self.visibility(alert, now)
                if not vis_cache.get("visible"):
                    reason = f"not visible from {self.site.name} in the next {self.cfg.visibility_window_hours:g} h" \
                             + (f" ({vis_cache['error']})" if vis_cache.get("error") else "")
                    continue
            return Decision(True, "observe", None, rule.priority, i, list(rule.actions), vis_cache)
        return Decision(False, "ignore", reason, visibility=vis_cache)

    # -- visibility ----------------------------------------------------------------------
    def target_points(self, alert: Alert) -> tuple[np.ndarray, np.ndarray]:
        if alert.skymap is not None:
            sm = alert.skymap
            idx = sm.credible_cells(alert.credible_level)
            if idx.size > VIS_MAX_POINTS:
                idx = idx[np.linspace(0, idx.size - 1, VIS_MAX_POINTS).astype(int)]
            from astropy_healpix import HEALPix

            ras, decs = [], []
            orders = sm.orders[idx]
            for order in np.unique(orders):
                sel = idx[orders == order]
                lon, lat = HEALPix(nside=2 ** int(order), order="nested").healpix_to_lonlat(
                    (sm.uniq[sel] - 4 * 4 ** int(order)).astype(np.int64))
                ras.append(lon.deg)
                decs.append(lat.deg)
            return np.concatenate(ras), np.concatenate(decs)
        return np.array([alert.ra], dtype=float), np.array([alert.dec], dtype=float)

    def visibility(self, alert: Alert, now: float) -> dict[str, Any]:
        try:
            ra, dec = self.target_points(alert)
            return site_visibility(ra, dec, self.site, now, self.cfg.visibility_window_hours)
        except Exception as e:  # astropy failures must not lose the alert; report them
            return {"visible": False, "error": f"{type(e).__name__}: {e}"}


def site_visibility(ra, dec, site, start: float, hours: float, step_minutes: float = VIS_STEP_MINUTES) -> dict:
    """When, within [start, start + hours], any of the points is observable from the site."""
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_body, get_sun
    from astropy.time import Time
    from astropy.utils import iers

    n = max(1, int(math.ceil(hours * 60 / step_minutes)) + 1)
    offsets = np.arange(n) * step_minutes * 60.0
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = Time(start + offsets, format="unix")
        loc = EarthLocation(lat=site.lat * u.deg, lon=site.lon * u.deg, height=site.elevation * u.m)
        frame = AltAz(obstime=times, location=loc)
        sun = get_sun(times).transform_to(frame)
        moon = get_body("moon", times, loc).transform_to(frame)
        target = SkyCoord(ra=np.asarray(ra)[:, None] * u.deg, dec=np.asarray(dec)[:, None] * u.deg).transform_to(
            AltAz(obstime=times[None, :], location=loc))
    alt = target.alt.deg
    az = target.az.deg
    moon_sep = angular_separation(az, alt, moon.az.deg[None, :], moon.alt.deg[None, :])
    dark = sun.alt.deg[None, :] <= site.max_sun_altitude
    ok = (alt >= site.min_altitude) & dark & (moon_sep >= site.min_moon_separation)
    any_t = ok.any(axis=0)
    first = int(np.argmax(any_t)) if any_t.any() else None
    return {
        "visible": bool(any_t.any()),
        "first_visible": float(start + offsets[first]) if first is not None else None,
        "visible_minutes": float(any_t.sum() * step_minutes),
        "max_altitude": float(np.nanmax(alt)),
        "sun_altitude_now": float(sun.alt.deg[0]),
        "moon_separation_min": float(np.nanmin(moon_sep)),
        "points": int(np.size(ra)),
        "window_hours": hours,
    }
