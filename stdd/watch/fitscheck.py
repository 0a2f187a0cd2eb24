"""Is this a whole FITS file? A structural check, without reading the data into memory.

Design note: astropy opens a truncated file with only a warning, and opening a gzip file
decompresses it whole into memory. Instead the file is walked as a stream, HDU by HDU: each
header (2880-byte blocks up to END, parsed by astropy's `Header.fromstring`) gives the size of
the data that follows (|BITPIX|/8 · GCOUNT · (PCOUNT + ΠNAXISn)), which is skipped; the file is
whole when every data unit is there. gzip files are read through `gzip` (its CRC and length
trailer are checked on the way), tile-compressed `.fz` files are plain FITS at this level.

Three outcomes: `ok`; `incomplete` (empty, or ends inside a header or a data unit — may still
be being written, so the caller waits before calling it bad); `bad` (not FITS at all, a
corrupt gzip stream, a header that cannot be parsed — waiting will not help).
"""
from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Literal

BLOCK = 2880
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class FitsCheck:
    state: Literal["ok", "incomplete", "bad"]
    reason: str | None = None
    hdus: int = 0

    @property
    def ok(self) -> bool:
        return self.state == "ok"


class _Incomplete(Exception):
    pass


class _Bad(Exception):
    pass


def _read_exact(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) < n:
        raise _Incomplete(f"truncated: the file ends inside {what}")
    return data


def _skip(fh: BinaryIO, n: int, what: str) -> int:
    """Skip n bytes; returns how many were actually there."""
    left = n
    while left > 0:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            break
        left -= len(chunk)
    return n - left


def _data_size(header, index: int) -> int:
    try:
        bitpix = int(header["BITPIX"])
        naxis = int(header["NAXIS"])
        axes = [int(header[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        pcount = int(header.get("PCOUNT", 0))
        gcount = int(header.get("GCOUNT", 1))
    except (KeyError, ValueError, TypeError) as e:
        raise _Bad(f"HDU {index}: header lacks a valid {e} keyword") from None
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise _Bad(f"HDU {index}: invalid BITPIX = {bitpix}")
    if naxis == 0:
        return 0
    if axes and axes[0] == 0 and header.get("GROUPS", False):  # random groups
        axes = axes[1:]
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(axes))


def _walk(fh: BinaryIO) -> int:
    from astropy.io.fits import Header

    index = 0
    while True:
        first = fh.read(BLOCK)
        if index > 0 and not first:
            return index  # clean end after the last HDU
        if index == 0:
            if not first:
                raise _Incomplete("empty file (0 bytes)")
            if not first.startswith(b"SIMPLE  ="[: len(first)]):
                raise _Bad(f"not a FITS file: it starts with {first[:16]!r}, not SIMPLE")
            if len(first) < BLOCK:
                raise _Incomplete(f"truncated: the file ends inside the primary header ({len(first)} bytes)")
        else:
            if not first.startswith(b"XTENSION="):
                return index  # trailing bytes after the last HDU: tolerated, as astropy does
            if len(first) < BLOCK:
                raise _Incomplete(f"truncated: the file ends inside the header of HDU {index}")
        raw = bytearray(first)
        while not _has_end(raw):
            if len(raw) > BLOCK * 2000:
                raise _Bad(f"HDU {index}: no END card in the first {len(raw) // BLOCK} header blocks")
            raw += _read_exact(fh, BLOCK, f"the header of HDU {index}")
        try:
            with warnings.catch_warnings():  # non-standard cards (ESO-LOG ...) are not our concern here
                warnings.simplefilter("ignore")
                header = Header.fromstring(bytes(raw).decode("ascii", errors="replace"))
        except Exception as e:  # astropy raises several kinds for a corrupt header
            raise _Bad(f"HDU {index}: unreadable header: {e}") from None
        size = _data_size(header, index)
        if size:
            got = _skip(fh, size, f"the data of HDU {index}")
            if got < size:
                raise _Incomplete(f"truncated: HDU {index} has {got} of its {size} data bytes")
            padding = (-size) % BLOCK
            _skip(fh, padding, "padding")  # a missing final padding is tolerated
        index += 1


def _has_end(raw: bytearray) -> bool:
    for off in range(0, len(raw), 80):
        card = raw[off: off + 80]
        if card[:8] == b"END     " or (card[:3] == b"END" and card[3:].strip() == b""):
            return True
    return False


def check_fits(path: str | os.PathLike) -> FitsCheck:
    """Check that `path` holds one or more complete FITS HDUs (plain, .fz or gzip)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
            fh.seek(0)
            if magic == GZIP_MAGIC:
                try:
                    with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                        n = _walk(gz)
                        while gz.read(1 << 20):  # to the end, so the CRC and length are verified
                            pass
                except EOFError:
                    return FitsCheck("incomplete", "truncated: the gzip stream ends early")
                except (gzip.BadGzipFile, zlib.error) as e:
                    return FitsCheck("bad", f"corrupt gzip stream: {e}")
            else:
                n = _walk(fh)
    except _Incomplete as e:
        return FitsCheck("incomplete", str(e))
    except _Bad as e:
        return FitsCheck("bad", str(e))
    except OSError as e:
        return FitsCheck("incomplete", f"cannot read: {e.strerror or e}")
    return FitsCheck("ok", None, n)
