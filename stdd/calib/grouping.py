"""Sets of calibration frames that combine into one master, and what a master must share with a frame.

A set shares the kind, instrument, image shape, binning, readout mode and temperature band
(`calibration.temperature_band` °C wide); flats also the band; darks also the exposure time
(a master dark is used scaled to another exposure only where the profile allows it). Frames of
one set taken more than `SPLIT_HOURS` apart are separate sets (two nights' biases are two masters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .frametypes import FrameInfo

SPLIT_HOURS = 12.0


def temperature_bin(temp: float | None, band: float) -> float | None:
    """The centre of the temperature band a temperature falls in (None when unknown)."""
    if temp is None:
        return None
    return round(round(temp / band) * band, 3)


@dataclass
class Group:
    kind: str
    instrument: str
    shape: tuple[int, int]
    binning: str
    readout: str | None
    temperature: float | None      # band centre
    band: str | None               # flats
    exptime: float | None          # darks
    frames: list[FrameInfo] = field(default_factory=list)

    def key(self) -> tuple:
        return (self.kind, self.instrument, self.shape, self.binning, self.readout, self.temperature, self.band,
                self.exptime)

    def label(self) -> str:
        parts = [self.kind, self.instrument or "camera", f"{self.shape[1]}x{self.shape[0]}", f"bin {self.binning}"]
        if self.readout:
            parts.append(f"readout {self.readout}")
        if self.temperature is not None:
            parts.append(f"{self.temperature:g} C")
        if self.band:
            parts.append(f"band {self.band}")
        if self.exptime is not None:
            parts.append(f"{self.exptime:g} s")
        return ", ".join(parts)


def group_key(info: FrameInfo, temperature_band: float) -> tuple:
    return (info.kind, info.instrument, tuple(info.shape), info.binning, info.readout,
            temperature_bin(info.temperature, temperature_band),
            info.band if info.kind == "flat" else None,
            round(float(info.exptime), 3) if info.kind == "dark" and info.exptime is not None else None)


def group_frames(infos: list[FrameInfo], temperature_band: float) -> list[Group]:
    """Calibration frames → sets (lights are ignored), ordered bias, dark, flat (the order they
    must be built in), then by time."""
    by_key: dict[tuple, list[FrameInfo]] = {}
    for info in infos:
        if info.kind in ("bias", "dark", "flat"):
            by_key.setdefault(group_key(info, temperature_band), []).append(info)
    groups: list[Group] = []
    for key, members in by_key.items():
        members.sort(key=lambda i: (i.mjd if i.mjd is not None else math.inf, i.path))
        chunk: list[FrameInfo] = []
        for info in members:
            if chunk and info.mjd is not None and chunk[-1].mjd is not None \
                    and (info.mjd - chunk[-1].mjd) * 24 > SPLIT_HOURS:
                groups.append(_group(key, chunk))
                chunk = []
            chunk.append(info)
        if chunk:
            groups.append(_group(key, chunk))
    order = {"bias": 0, "dark": 1, "flat": 2}
    groups.sort(key=lambda g: (order[g.kind], min((f.mjd for f in g.frames if f.mjd is not None), default=0.0)))
    return groups


def _group(key: tuple, frames: list[FrameInfo]) -> Group:
    kind, instrument, shape, binning, readout, temp, band, exptime = key
    return Group(kind, instrument, tuple(shape), binning, readout, temp, band, exptime, list(frames))


def group_label(info: FrameInfo, temperature_band: float) -> str:
    """The set a calibration frame belongs to, in words (the daemon records it with the frame)."""
    return _group(group_key(info, temperature_band), [info]).label()
