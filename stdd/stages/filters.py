"""Photometric bands: the filter alias table, colour pairs and catalogue/template suggestions.

Design note: a frame's filter is resolved once, in inspect, from the header value through (1) the
instrument profile's aliases, (2) `pipeline.filter` when set (it overrides the header), (3) the
built-in alias table below. A value none of them knows is an error naming it — STDWeb silently
falls back to r, which calibrates a V or an unfiltered frame against the wrong band without a word.
Single letters are case-sensitive (R is Cousins R, r is Sloan r); longer spellings are not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: header keywords holding the filter name, in the order they are read
FILTER_KEYWORDS = ("FILTER", "FILTERS", "CAMFILT", "FILTNAME", "FILTER1", "BAND")


@dataclass(frozen=True)
class Band:
    name: str            # canonical band name, as in result.json `filter`
    system: str          # johnson | sloan | gaia | 2mass | tycho
    wavelength_nm: float  # effective wavelength, used to pick the nearest band a catalogue has
    color: tuple[str, str]  # the colour used for the colour term

    @property
    def column(self) -> str:
        """Vizier-style catalogue column of this band."""
        return f"{self.name}mag"


BANDS: dict[str, Band] = {b.name: b for b in (
    Band("U", "johnson", 365, ("B", "V")),
    Band("B", "johnson", 445, ("B", "V")),
    Band("V", "johnson", 551, ("B", "V")),
    Band("R", "johnson", 658, ("B", "V")),
    Band("I", "johnson", 806, ("B", "V")),
    Band("u", "sloan", 354, ("g", "r")),
    Band("g", "sloan", 477, ("g", "r")),
    Band("r", "sloan", 623, ("g", "r")),
    Band("i", "sloan", 763, ("g", "r")),
    Band("z", "sloan", 913, ("r", "i")),
    Band("y", "sloan", 980, ("r", "i")),
    Band("G", "gaia", 640, ("BP", "RP")),
    Band("BP", "gaia", 510, ("BP", "RP")),
    Band("RP", "gaia", 780, ("BP", "RP")),
    Band("J", "2mass", 1235, ("J", "K")),
    Band("H", "2mass", 1662, ("J", "K")),
    Band("K", "2mass", 2159, ("J", "K")),
    Band("VT", "tycho", 535, ("BT", "VT")),
    Band("BT", "tycho", 420, ("BT", "VT")),
)}

# exact (case-sensitive) spellings
_EXACT = {
    "U": "U", "B": "B", "V": "V", "R": "R", "I": "I",
    "u": "u", "g": "g", "r": "r", "i": "i", "z": "z", "y": "y", "Y": "y",
    "G": "G", "J": "J", "H": "H", "K": "K", "Ks": "K", "KS": "K", "Kshort": "K", "K_s": "K",
    "Rc": "R", "RC": "R", "R_c": "R", "Ic": "I", "IC": "I", "I_c": "I", "Rj": "R", "Ij": "I",
    "u'": "u", "g'": "g", "r'": "r", "i'": "i", "z'": "z",
    "up": "u", "gp": "g", "rp": "r", "ip": "i", "zp": "z",
    "BP": "BP", "RP": "RP", "Gbp": "BP", "Grp": "RP", "VT": "VT", "BT": "BT",
}

# case-insensitive spellings (after collapsing spaces, dashes and underscores to one space)
_LOOSE = {
    "johnson u": "U", "johnson b": "B", "johnson v": "V", "johnson r": "R", "johnson i": "I",
    "bessell u": "U", "bessell b": "B", "bessell v": "V", "bessell r": "R", "bessell i": "I",
    "cousins r": "R", "cousins i": "I", "rc": "R", "ic": "I",
    "sdss u": "u", "sdss g": "g", "sdss r": "r", "sdss i": "i", "sdss z": "z",
    "sdssu": "u", "sdssg": "g", "sdssr": "r", "sdssi": "i", "sdssz": "z",
    "sloan u": "u", "sloan g": "g", "sloan r": "r", "sloan i": "i", "sloan z": "z",
    "u sdss": "u", "g sdss": "g", "r sdss": "r", "i sdss": "i", "z sdss": "z",
    "ztf g": "g", "ztf r": "r", "ztf i": "i", "zg": "g", "zr": "r", "zi": "i",
    "ps1 g": "g", "ps1 r": "r", "ps1 i": "i", "ps1 z": "z", "ps1 y": "y",
    "g ps1": "g", "r ps1": "r", "i ps1": "i", "z ps1": "z", "y ps1": "y",
    "gaia g": "G", "gaia bp": "BP", "gaia rp": "RP", "bp": "BP", "rp": "RP",
    "2mass j": "J", "2mass h": "H", "2mass k": "K", "2mass ks": "K", "ks": "K", "kshort": "K",
}


class UnknownFilter(ValueError):
    """The filter value is not in the profile's aliases nor in the built-in table."""


def _loose(value: str) -> str:
    return re.sub(r"[\s_\-]+", " ", value.strip()).lower()


def lookup(value: str, aliases: dict[str, str] | None = None) -> str | None:
    """The canonical band for a filter name, or None when nothing knows it."""
    value = str(value).strip()
    if not value:
        return None
    for table in (aliases or {},):
        if value in table:
            return canonical(table[value])
        lowered = {_loose(k): v for k, v in table.items()}
        if _loose(value) in lowered:
            return canonical(lowered[_loose(value)])
    if value in _EXACT:
        return _EXACT[value]
    if _loose(value) in _LOOSE:
        return _LOOSE[_loose(value)]
    # "i DECam SDSS c0003 7835.0 1470.0", "r.MP9601", "V_Bessell": the first token names the band
    token = re.split(r"[\s.,;/]+", value)[0]
    if token != value:
        return lookup(token, aliases)
    return None


def canonical(name: str) -> str:
    """Validate a band name given in configuration (profile alias target or pipeline.filter)."""
    name = str(name).strip()
    if name in BANDS:
        return name
    mapped = _EXACT.get(name) or _LOOSE.get(_loose(name))
    if mapped:
        return mapped
    raise UnknownFilter(f"{name!r} is not a band stdd knows ({', '.join(BANDS)})")


def resolve(header_value: str | None, keyword: str | None, aliases: dict[str, str] | None,
            forced: str | None) -> tuple[str, str]:
    """(band, how it was chosen). Raises UnknownFilter naming the header value."""
    if forced:
        band = canonical(forced)
        return band, f"pipeline.filter = {forced!r}" + (
            f" (header {keyword} = {header_value!r} ignored)" if header_value not in (None, "") else "")
    if header_value is None or str(header_value).strip() == "":
        raise UnknownFilter(
            "no filter in the header (looked for " + ", ".join(FILTER_KEYWORDS)
            + "); set pipeline.filter or map it in the instrument profile")
    band = lookup(str(header_value), aliases)
    if band is None:
        raise UnknownFilter(
            f"unknown filter {keyword} = {str(header_value).strip()!r}: add it to the instrument profile's "
            "filter_aliases or set pipeline.filter")
    return band, f"header {keyword} = {str(header_value).strip()!r}"


def header_filter(header) -> tuple[str | None, str | None]:
    """(value, keyword) of the first filter keyword present in a header."""
    for kw in FILTER_KEYWORDS:
        if kw in header and str(header[kw]).strip() != "":
            return str(header[kw]).strip(), kw
    return None, None


def suggest_catalog(band: str, dec: float) -> str:
    """The Vizier catalogue STDWeb would use for a band at this declination."""
    b = BANDS[band]
    if b.system == "johnson":
        return "gaiadr3syn"
    if b.system == "gaia":
        return "gaiadr2"
    if b.system == "2mass":
        return "vhs" if dec < 0 else "2mass"
    if b.system == "tycho":
        return "I/259/tyc2"
    return "ps1" if dec > -30 else "skymapper"


def suggest_template(band: str, ra: float, dec: float) -> str:
    """The survey STDWeb would take a template from."""
    if dec > -30:
        return "ps1"
    from astropy.coordinates import SkyCoord

    b = abs(SkyCoord(ra, dec, unit="deg").galactic.b.deg)
    return "ls" if b > 20 else "skymapper"


def survey_band(band: str) -> str:
    """The PS1 / Legacy Survey band closest to a frame's band."""
    return {"U": "g", "B": "g", "V": "g", "R": "r", "I": "i", "u": "g", "g": "g", "r": "r", "i": "i",
            "z": "z", "y": "y", "G": "r", "BP": "g", "RP": "i", "J": "z", "H": "z",
            "K": "z", "VT": "g", "BT": "g"}[band]


def nearest_band(band: str, available: list[str]) -> str | None:
    """Of the bands a catalogue has, the one closest in wavelength to `band`."""
    known = [a for a in available if a in BANDS]
    if not known:
        return None
    w = BANDS[band].wavelength_nm
    return min(known, key=lambda a: abs(BANDS[a].wavelength_nm - w))
