"""No localisation, no action: is what a notice says about *where* good enough to point at?

Design note: the rule is general, never a list of missions. Many notices carry numbers in the
position fields that are not a localisation: an instrument that only times a burst (AGILE
MCAL, Konus-Wind, INTEGRAL SPI-ACS, a GRB monitor's "trigger only" or subthreshold packet)
fills them with its pointing direction, zeros or sentinel values, and says so by giving an
error radius of 0, or none at all. So, for every format:

1. A stated position is a *placeholder* — kept only as a flag — when it is not finite, when its
   declination is outside ±90°, when its right ascension is beyond one turn (outside −180…360°,
   e.g. −999 or 9999), or when it is exactly (0°, 0°), GCN's "no position yet"
   (`sky_position`; the parsers call `set_position`).
2. A position is a *localisation* only with an error region the notice states (radius, ellipse
   or box, > 0) or a skymap. An error radius of 0 or below means the instrument did not
   localise the event; a missing one means the notice does not say how well it is localised
   (`localisation_problem`).
3. The one exception to 2: a position the notice presents as exact — a catalogued source (a
   known-source flag, a reference catalogue) or the position of a named target such as an
   optical transient (`Alert.exact_position`, set by the parsers from what the notice says).

`policy.screen` applies this; no configuration overrides it. The alert is still recorded,
with the reason as its `ignore_reason`.
"""
from __future__ import annotations

import math

#: right ascensions beyond one turn are sentinels (a −180…180 convention is accepted)
RA_MIN, RA_MAX = -180.0, 360.0


def sky_position(ra, dec) -> tuple[float, float] | None:
    """(ra in [0, 360), dec) for a stated position, or None when it is a placeholder or sentinel."""
    try:
        ra, dec = float(ra), float(dec)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(ra) and math.isfinite(dec)):
        return None
    if not -90.0 <= dec <= 90.0 or not RA_MIN <= ra <= RA_MAX:
        return None
    if ra == 0.0 and dec == 0.0:
        return None
    return ra % 360.0, dec


def set_position(alert, ra, dec) -> bool:
    """Set `alert.ra, alert.dec` from the stated values, or flag them as a placeholder; True when set."""
    pos = sky_position(ra, dec)
    if pos is None:
        if ra is not None or dec is not None:
            alert.flags.append(f"placeholder_position: ra={ra}, dec={dec}")
            alert.extra["stated_position"] = [ra, dec]
        return False
    alert.ra, alert.dec = pos
    return True


def _who(alert) -> str:
    what = " ".join(x for x in (alert.mission, alert.instrument, alert.notice_type) if x)
    return f"the {what} notice" if what else "the notice"


def localisation_problem(alert) -> str | None:
    """Why the alert's position is not a localisation to act on, or None when it is one."""
    if alert.skymap is not None or alert.region is not None:
        return None
    if alert.ra is None or alert.dec is None:
        placeholder = next((f for f in alert.flags if f.startswith("placeholder_position")), None)
        return f"no usable position ({placeholder})" if placeholder else None  # the caller says "no position"
    if alert.exact_position:
        return None
    stated = alert.stated_error_deg
    if stated is not None and math.isfinite(stated) and stated <= 0:
        return (f"no localisation: {_who(alert)} gives error radius {stated:g} deg — the instrument did not "
                "localise the event (a position with no error is a pointing direction or a placeholder)")
    bad = next((f for f in alert.flags if f.startswith("bad_error_region")), None)
    if bad:
        return f"no localisation: the error region cannot be used ({bad})"
    return (f"no localisation: {_who(alert)} gives a position without an error region, so it does not say "
            "how well the event is localised")
