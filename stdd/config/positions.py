"""Sky positions written in settings ("RA Dec" in degrees or sexagesimal), checked when the
settings are loaded."""
from __future__ import annotations


def parse_center(text: str | None) -> tuple[float, float] | None:
    """(ra, dec) in degrees; ValueError naming the text when it is not a position."""
    if not text or not str(text).strip():
        return None
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    parts = str(text).replace(",", " ").split()
    try:
        if len(parts) == 2 and all(_is_number(x) for x in parts):
            c = SkyCoord(float(parts[0]), float(parts[1]), unit="deg")
        else:
            c = SkyCoord(str(text), unit=(u.hourangle, u.deg))
    except ValueError as e:
        raise ValueError(f"not a sky position: {text!r} ({e})") from None
    return float(c.ra.deg), float(c.dec.deg)


def _is_number(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False
