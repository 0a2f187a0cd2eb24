"""What a frame is, from its header: bias, dark, flat or light, and the facts that group it.

The image type is read from the first of the profile's `image_type_keywords`, then IMAGETYP,
IMAGETYPE, OBSTYPE, IMGTYPE, FRAMETYP, FRAMETYPE, EXPTYPE, FRAME. Its value is looked up, case
and spacing ignored, first in the profile's `image_types` table, then in the built-in aliases
(MaxIm DL's 'Bias Frame', 'Dark Frame', 'Flat Field', 'Light Frame'; IRAF's 'zero', 'object';
'dome flat', 'sky flat', 'twilight flat', ...). A frame with no image-type keyword is a light
frame unless its OBJECT is exactly a calibration alias; an unknown value is a light frame with a
note saying so (a frame is never dropped for an odd header).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..stages.header import number

KINDS = ("bias", "dark", "flat", "light")
CALIBRATION_KINDS = ("bias", "dark", "flat")

TYPE_KEYWORDS = ("IMAGETYP", "IMAGETYPE", "OBSTYPE", "IMGTYPE", "FRAMETYP", "FRAMETYPE", "EXPTYPE", "FRAME")
BINNING_KEYWORDS = (("XBINNING", "YBINNING"), ("CCDXBIN", "CCDYBIN"), ("BINX", "BINY"), ("XBIN", "YBIN"))
BINNING_TEXT_KEYWORDS = ("CCDSUM", "BINNING", "CCDBIN")
READOUT_KEYWORDS = ("READOUTM", "READMODE", "READ-MODE", "RDMODE", "READOUT", "READ_MODE", "ROMODE")
TEMPERATURE_KEYWORDS = ("CCD-TEMP", "CCDTEMP", "CCD_TEMP", "DET-TEMP", "DETTEMP", "TEMPERAT", "SET-TEMP",
                        "SETTEMP")

ALIASES: dict[str, str] = {}
for _kind, _names in {
    "bias": ("bias", "zero", "bias frame", "biasframe", "zero frame", "offset", "bias image", "master bias"),
    "dark": ("dark", "dark frame", "darkframe", "dark current", "dark image", "thermal"),
    "flat": ("flat", "flat field", "flatfield", "flat frame", "flat-field", "dome flat", "domeflat", "sky flat",
             "skyflat", "twilight flat", "twilight", "twflat", "lamp flat", "lampflat", "dflat", "sflat",
             "screen flat", "flat image"),
    "light": ("light", "light frame", "object", "science", "sci", "target", "light image", "focus", "standard",
              "std"),
}.items():
    for _n in _names:
        ALIASES[_n] = _kind


def normal(value) -> str:
    """A header value compared loosely: lower case, '_' and '-' as spaces, spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(value).strip().lower())).strip()


_NORMAL_ALIASES = {normal(k): v for k, v in ALIASES.items()}


@dataclass
class FrameInfo:
    """One frame's type and the facts calibration groups and matches it by."""

    path: str
    kind: str                       # bias | dark | flat | light
    imagetyp: str | None            # the header value, as written
    type_keyword: str | None
    instrument: str
    shape: tuple[int, int]          # of the image as stored (height, width), before trimming
    binning: str                    # "1x1"
    readout: str | None
    temperature: float | None
    band: str | None                # canonical band, or the header value when not a known band
    exptime: float | None
    mjd: float | None               # start of exposure
    profile: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def kind_of(header, profile=None) -> tuple[str, str | None, str | None, str | None]:
    """(kind, header value, keyword, note) for a header; `profile` an InstrumentProfile or None."""
    table = {normal(k): v for k, v in (profile.image_types.items() if profile is not None else ())}
    keywords = [k.upper() for k in (profile.image_type_keywords if profile is not None else [])]
    keywords += [k for k in TYPE_KEYWORDS if k not in keywords]
    for kw in keywords:
        if kw not in header:
            continue
        raw = str(header[kw]).strip()
        if not raw:
            continue
        key = normal(raw)
        kind = table.get(key) or _NORMAL_ALIASES.get(key)
        if kind is None:
            return "light", raw, kw, (f"{kw} = {raw!r} is not a known image type; processed as a light frame "
                                      "(map it in the instrument profile's image_types)")
        return kind, raw, kw, None
    obj = header.get("OBJECT")
    if obj is not None:
        kind = table.get(normal(obj)) or _NORMAL_ALIASES.get(normal(obj))
        if kind in CALIBRATION_KINDS:
            return kind, str(obj).strip(), "OBJECT", None
    return "light", None, None, None


def binning_of(header, extra: list[str] = ()) -> str:
    """"XxY" from XBINNING/YBINNING, CCDXBIN/..., CCDSUM '2 2', BINNING '2x2'; "1x1" when absent."""
    for key in extra:
        if key in header:
            m = re.findall(r"\d+", str(header[key]))
            if len(m) >= 2:
                return f"{int(m[0])}x{int(m[1])}"
            if len(m) == 1:
                return f"{int(m[0])}x{int(m[0])}"
    for kx, ky in BINNING_KEYWORDS:
        if kx in header:
            x = number(header, [kx])[0]
            y = number(header, [ky])[0] if ky in header else x
            if x and y:
                return f"{int(x)}x{int(y)}"
    for key in BINNING_TEXT_KEYWORDS:
        if key in header:
            m = re.findall(r"\d+", str(header[key]))
            if len(m) >= 2:
                return f"{int(m[0])}x{int(m[1])}"
    return "1x1"


def readout_of(header, extra: list[str] = ()) -> str | None:
    for key in (*extra, *READOUT_KEYWORDS):
        if key in header and str(header[key]).strip():
            return str(header[key]).strip()
    return None


def temperature_of(header, extra: list[str] = ()) -> float | None:
    return number(header, (*extra, *TEMPERATURE_KEYWORDS))[0]


def band_of(header, profile=None) -> str | None:
    """The canonical band when the filter is known, else the header value itself (flats of an
    unknown filter still group among themselves), else None."""
    from ..stages import filters

    value, _ = filters.header_filter(header)
    if value is None:
        return None
    band = filters.lookup(value, profile.filter_aliases if profile is not None else None)
    return band or str(value).strip()


def describe(path: str | Path, header, shape: tuple[int, int], profile=None) -> FrameInfo:
    """The FrameInfo of a frame whose header (and stored image shape) are known."""
    from ..stages.header import exposure_time, observation_start

    kind, raw, kw, note = kind_of(header, profile)
    cal = profile.calibration if profile is not None else None
    start, _ = observation_start(header)
    exptime, _ = exposure_time(header)
    info = FrameInfo(
        path=str(path), kind=kind, imagetyp=raw, type_keyword=kw,
        instrument=str(header.get("INSTRUME", "") or "").strip() or (profile.name if profile is not None else ""),
        shape=(int(shape[0]), int(shape[1])),
        binning=binning_of(header, cal.binning_keywords if cal else []),
        readout=readout_of(header, cal.readout_keywords if cal else []),
        temperature=temperature_of(header, cal.temperature_keywords if cal else []),
        band=band_of(header, profile), exptime=exptime,
        mjd=float(start.mjd) if start is not None else None,
        profile=profile.name if profile is not None else None,
    )
    if note:
        info.notes.append(note)
    if kind == "dark" and exptime is None:
        info.notes.append("a dark frame without an exposure time (EXPTIME): it cannot be scaled")
    return info


def read_info(path: str | Path, profile=None) -> FrameInfo:
    """Read a file's header and describe it. Raises stdd.stages.header.FrameError when the file is
    not a usable FITS image."""
    from ..stages.header import load_first_image

    _, header, _ = load_first_image(Path(path), header_only=True)
    n1, n2 = int(header.get("NAXIS1", 0) or header.get("ZNAXIS1", 0)), int(header.get("NAXIS2", 0)
                                                                           or header.get("ZNAXIS2", 0))
    return describe(path, header, (n2, n1), profile)
