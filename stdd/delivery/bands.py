"""stdd bands → SkyPortal bandpass names (SkyPortal's ALLOWED_BANDPASSES are sncosmo's names).

| stdd band | SkyPortal bandpass | why |
|---|---|---|
| U B V R I | bessellux bessellb bessellv bessellr besselli | Johnson-Cousins, sncosmo's Bessell curves |
| u g r i z | sdssu sdssg sdssr sdssi sdssz | Sloan |
| y | ps1::y | Pan-STARRS y (SDSS has none) |
| G BP RP | gaia::g gaia::gbp gaia::grp | Gaia |
| J H K | 2massj 2massh 2massks | 2MASS |

A site maps its own names (a ztfr camera, say) with `[delivery.skyportal] filter_map`.
"""
from __future__ import annotations

SKYPORTAL_BANDS = {
    "U": "bessellux", "B": "bessellb", "V": "bessellv", "R": "bessellr", "I": "besselli",
    "u": "sdssu", "g": "sdssg", "r": "sdssr", "i": "sdssi", "z": "sdssz", "y": "ps1::y",
    "G": "gaia::g", "BP": "gaia::gbp", "RP": "gaia::grp",
    "J": "2massj", "H": "2massh", "K": "2massks",
}


def skyportal_band(band: str | None, extra: dict[str, str] | None = None) -> str | None:
    """The SkyPortal bandpass of an stdd band (None when unknown: the item is not sent)."""
    if not band:
        return None
    if extra and band in extra:
        return extra[band]
    return SKYPORTAL_BANDS.get(band)
