"""Reading a frame and making its header usable: the image HDU, header fixes, gain, saturation, time.

Design note: every reason a file cannot be used is a `FrameError` whose message names the problem
in words a night assistant understands ("empty file (0 bytes)", "a 3-D cube ...", "only tables"),
never an astropy traceback. Header fixes are recorded as notes so the result says what was changed.
"""
from __future__ import annotations

import re
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT", "GCOUNT",
              "XTENSION", "EXTNAME", "EXTVER", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM",
              "TFIELDS", "INHERIT", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZCMPTYPE",
              "ZTILE1", "ZTILE2", "ZQUANTIZ", "ZDITHER0", "COMMENT", "HISTORY", ""}

# keywords that confuse astropy.wcs or SCAMP and carry nothing we use
JUNK_PREFIXES = ("WAT0_", "WAT1_", "WAT2_", "LTM", "LTV", "WCSDIM", "PRISM")

WCS_NUMERIC = re.compile(r"^(CRVAL|CRPIX|CDELT|CROTA|CD\d_|PC\d_|PV\d_|A_|B_|AP_|BP_|EQUINOX|EPOCH|LONPOLE|LATPOLE)")

EXPTIME_KEYWORDS = ("EXPTIME", "EXPOSURE", "EXP_TIME", "ITIME", "EXPOSED", "TELAPSE")
GAIN_KEYWORDS = ("GAIN", "EGAIN", "CCD_GAIN", "CCDGAIN", "ARAWGAIN")
SATURATION_KEYWORDS = ("SATURATE", "SATURATION", "SATLEVEL", "MAXLIN", "DATAMAX")


class FrameError(Exception):
    """The file cannot be used as a frame; the message says why."""


def load_first_image(path: Path, header_only: bool = False) -> tuple[np.ndarray | None, fits.Header, list[str]]:
    """(data as float64, header, notes) of the first 2-D image in a FITS file (plain, .gz, .fz, MEF)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FrameError(f"cannot read the file: {e.strerror or e}") from None
    if size == 0:
        raise FrameError("empty file (0 bytes)")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False, ignore_missing_simple=False)
        except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as e:
            if "SIMPLE" in str(e):
                raise FrameError("not a FITS file (it does not begin with a SIMPLE card)") from None
            raise FrameError(f"not a FITS file or corrupt: {_short(e)}") from None
    truncated = [w for w in caught if "truncat" in str(w.message).lower()]
    try:
        return _pick_image(hdul, header_only, notes, bool(truncated))
    finally:
        hdul.close()


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _expected_end(hdu) -> int | None:
    """Byte offset where an uncompressed HDU's data should end (None when unknown)."""
    try:
        return int(hdu._data_offset + hdu._data_size)
    except (AttributeError, TypeError):
        return None


def _dims(hdu) -> tuple[int, ...]:
    h = hdu.header
    n = int(h.get("NAXIS", 0) or 0)
    return tuple(int(h.get(f"NAXIS{i}", 0) or 0) for i in range(n, 0, -1))  # numpy order


def _pick_image(hdul, header_only: bool, notes: list[str], truncated: bool):
    kinds = []
    cube = None
    for i, hdu in enumerate(hdul):
        is_image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
        if not is_image:
            kinds.append(f"HDU {i}: {type(hdu).__name__}" + (f" '{hdu.name}'" if hdu.name else ""))
            continue
        dims = _dims(hdu)
        real = tuple(d for d in dims if d > 1)
        if not dims or 0 in dims:
            continue
        if len(real) != 2:
            if len(real) >= 3 and cube is None:
                cube = (i, dims)
            continue
        header = hdu.header.copy()
        if i > 0:
            # multi-extension file: keys of the primary header the extension does not repeat
            for card in hdul[0].header.cards:
                if card.keyword not in STRUCTURAL and card.keyword not in header:
                    header.append(card, end=True)
            notes.append(f"image taken from HDU {i}" + (f" ({hdu.name})" if hdu.name else ""))
        if header_only:
            return None, header, notes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                data = hdu.data
            except Exception as e:  # astropy raises several kinds for damaged data
                expected = _expected_end(hdu)
                size = Path(hdul.filename() or "").stat().st_size if hdul.filename() else None
                if str(hdul.filename() or "").lower().endswith((".gz", ".bz2", ".z")):
                    raise FrameError(f"truncated file: the compressed data ends before HDU {i} is complete "
                                     f"({_short(e)})") from None
                if expected and size is not None and size < expected:
                    raise FrameError(f"truncated file: {size} bytes, but HDU {i} needs {expected}") from None
                raise FrameError(f"corrupt image data in HDU {i}: {_short(e)}") from None
        if data is None:
            raise FrameError(f"HDU {i} declares an image but holds no data")
        if truncated or any("truncat" in str(w.message).lower() for w in caught):
            raise FrameError(f"truncated file: HDU {i} should hold {np.prod(dims)} pixels but the file ends early")
        data = np.asarray(data, dtype=np.float64).reshape(real)
        return data, header, notes
    if cube is not None:
        i, dims = cube
        raise FrameError(f"HDU {i} is a {len(dims)}-D cube of shape {'x'.join(map(str, dims[::-1]))}; "
                         "stdd processes 2-D images")
    if kinds:
        raise FrameError("no image in the file, only table(s): " + "; ".join(kinds))
    if truncated:
        raise FrameError("truncated file: no complete image HDU")
    raise FrameError("no image data in the file (NAXIS = 0 in every HDU)")


def fix_header(header: fits.Header, shape: tuple[int, int]) -> list[str]:
    """Make the header usable in place; returns what was changed."""
    notes = []
    for key in list(header.keys()):
        if key.startswith(JUNK_PREFIXES):
            header.remove(key, ignore_missing=True, remove_all=True)
    if "RADECSYS" in header and "RADESYS" not in header:
        header.rename_keyword("RADECSYS", "RADESYS")
    for key in list(header.keys()):
        if WCS_NUMERIC.match(key) and isinstance(header[key], str):
            try:
                header[key] = float(header[key].strip())
                notes.append(f"{key} converted from a string to a number")
            except ValueError:
                header.remove(key)
                notes.append(f"{key} = {header.get(key)!r} is not a number; dropped")
    # TAN with PV distortion terms is TPV (SCAMP writes such headers)
    ctype1 = str(header.get("CTYPE1", ""))
    if ctype1.endswith("-TAN") and any(re.fullmatch(r"PV[12]_([1-9]|[1-3]\d)", k) for k in header.keys()):
        header["CTYPE1"] = ctype1.replace("-TAN", "-TPV")
        header["CTYPE2"] = str(header.get("CTYPE2", "")).replace("-TAN", "-TPV")
        notes.append("CTYPE TAN with PV terms read as TPV")
    # empty CTYPEs (MIDAS) make a linear, non-celestial WCS: drop the pixel-coordinate junk
    if "CTYPE1" in header and not str(header["CTYPE1"]).strip():
        for k in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2"):
            header.remove(k, ignore_missing=True)
        notes.append("empty CTYPE1/CTYPE2: no celestial WCS")
    # SIP coefficients without -SIP in CTYPE confuse astropy
    if not str(header.get("CTYPE1", "")).endswith("-SIP") and "A_ORDER" not in header:
        for k in list(header.keys()):
            if re.fullmatch(r"(A|B|AP|BP)_\d+_\d+", k):
                header.remove(k)
    # DATASEC / TRIMSEC outside the pixels (kept from an unbinned camera, ...)
    for kw in ("TRIMSEC", "DATASEC"):
        if kw in header:
            sec = parse_section(str(header[kw]))
            h, w = shape
            if sec is None or not (0 <= sec[0] <= sec[1] < w and 0 <= sec[2] <= sec[3] < h):
                notes.append(f"{kw} = {header[kw]!r} does not fit the {w}x{h} image; ignored")
                header.remove(kw)
    return notes


def parse_section(text: str) -> tuple[int, int, int, int] | None:
    """'[x1:x2,y1:y2]' (1-based, inclusive) → 0-based (x1, x2, y1, y2), or None."""
    m = re.fullmatch(r"\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*", text)
    if not m:
        return None
    x1, x2, y1, y2 = (int(v) - 1 for v in m.groups())
    return min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)


def linearize_ps1(data: np.ndarray, header: fits.Header) -> tuple[np.ndarray, bool]:
    """Pan-STARRS images store asinh-scaled values (BSOFTEN, BOFFSET): back to linear flux."""
    if "BSOFTEN" in header and "BOFFSET" in header:
        x = data * 0.4 * np.log(10)
        data = float(header["BOFFSET"]) + float(header["BSOFTEN"]) * (np.exp(x) - np.exp(-x))
        for k in ("BSOFTEN", "BOFFSET", "BLANK"):
            header.remove(k, ignore_missing=True)
        return data, True
    return data, False


def number(header: fits.Header, keys) -> tuple[float | None, str | None]:
    """The first of `keys` holding a finite number, and the key."""
    for k in keys:
        if k in header:
            try:
                v = float(header[k])
            except (TypeError, ValueError):
                continue
            if np.isfinite(v):
                return v, k
    return None, None


def exposure_time(header: fits.Header) -> tuple[float | None, str | None]:
    v, k = number(header, EXPTIME_KEYWORDS)
    if v is not None and v < 0:
        return None, None
    return v, k


_DMY = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2})\s*$")


def _parse_date(value) -> Time | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        if 2400000 < v < 2500000:
            return Time(v, format="jd", scale="utc")
        if 0 < v < 100000:
            return Time(v, format="mjd", scale="utc")
        return None
    text = str(value).strip()
    if not text:
        return None
    m = _DMY.match(text)
    if m:  # the pre-2000 FITS convention 'DD/MM/YY' (19YY)
        d, mo, y = (int(g) for g in m.groups())
        text = f"{1900 + y:04d}-{mo:02d}-{d:02d}"
    text = re.sub(r"^(\d{4}-\d\d-\d\dT\d\d)-(\d\d)-(\d\d)", r"\1:\2:\3", text)
    text = text.replace(" ", "T", 1) if re.match(r"^\d{4}-\d\d-\d\d \d", text) else text
    try:
        return Time(text, scale="utc")
    except ValueError:
        try:
            import dateutil.parser

            return Time(dateutil.parser.parse(text), scale="utc")
        except (ValueError, OverflowError, ImportError):
            return None


def _time_of_day(header) -> tuple[float | None, str | None]:
    for k in ("TIME-OBS", "TIMEOBS", "UT", "UTSTART", "UT-START", "UTC", "TM-START"):
        if k not in header:
            continue
        v = header[k]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v), k  # seconds after midnight (MIDAS TM-START)
        m = re.fullmatch(r"\s*(\d{1,2})[:h ](\d{1,2})[:m ](\d{1,2}(?:\.\d*)?)s?\s*", str(v))
        if m:
            hh, mm, ss = int(m.group(1)), int(m.group(2)), float(m.group(3))
            return hh * 3600 + mm * 60 + ss, k
    return None, None


def observation_start(header: fits.Header) -> tuple[Time | None, str | None]:
    """Start of the exposure from the first usable of DATE-OBS (+TIME-OBS/UT), DATEOBS, MJD-OBS, MJD, JD, DATE."""
    for key in ("DATE-OBS", "DATEOBS", "MJD-OBS", "MJD", "JD", "JD-OBS", "DATE"):
        if key not in header:
            continue
        t = _parse_date(header[key])
        if t is None:
            continue
        text = str(header[key]).strip()
        if key in ("DATE-OBS", "DATEOBS", "DATE") and "T" not in text and ":" not in text:
            secs, tkey = _time_of_day(header)
            if secs is not None:
                return t + timedelta(seconds=secs), f"{key} + {tkey}"
            if key == "DATE":
                continue
        return t, key
    return None, None


def pointing_hint(header: fits.Header) -> tuple[float | None, float | None, str | None]:
    """Approximate pointing from telescope keywords (for blind matching), in degrees."""
    from astropy.coordinates import Angle

    for rk, dk in (("RA_OBS", "DEC_OBS"), ("OBJCTRA", "OBJCTDEC"), ("RA", "DEC"), ("TELRA", "TELDEC"),
                   ("RA_EXP", "DEC_EXP"), ("CENRA1", "CENDEC1"), ("RA-D", "DEC-D")):
        if rk in header and dk in header:
            rv, dv = header[rk], header[dk]
            try:
                if isinstance(rv, str):
                    ra = Angle(rv.strip(), unit="hourangle" if re.search(r"[:hs ]", rv.strip()) else "deg").deg
                else:
                    ra = float(rv)
                dec = Angle(dv.strip(), unit="deg").deg if isinstance(dv, str) else float(dv)
            except (ValueError, TypeError):
                continue
            if np.isfinite(ra) and np.isfinite(dec) and -90 <= dec <= 90:
                return float(ra) % 360.0, float(dec), f"{rk}/{dk}"
    return None, None, None
