"""A deterministic synthetic sky: the same stars wherever and whenever you look.

Design note
-----------
Stars are generated per sky cell, not per frame: the sphere is cut into declination bands of ``cell_deg`` and
each band into RA cells of about the same size. A cell's stars (count ~ Poisson(density · area), positions
uniform on the sphere, magnitudes, colours and catalogue noise) come from a random generator seeded by
``(seed, band index, cell index)``. Hence any region — a frame, its template from another pointing, a
neighbouring field of a template library, the demo's dithered frames — sees identical stars with identical
catalogue entries, without anything being stored.

Photometry of a star:
* ``r`` (true) follows number counts dN/dm ∝ 10^(slope·m) between ``mag_bright`` and ``mag_faint``;
* g − r = 0.2 + 1.3·Beta(2, 3) (0.2–1.5, mode ≈ 0.6); r − i = 0.02 + 0.40·(g − r) + N(0, 0.03);
* B − V = (g − r + 0.23)/1.02 and V = g − 0.60·(B − V) + 0.12 (Jester et al. 2005 transformation for stars);
* catalogue magnitudes = true + N(0, e), e = 0.010–0.020 mag growing linearly from ``mag_bright`` to
  ``mag_faint`` (the listed ``e_*mag`` is that e): the catalogue noise is exactly what its errors state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from .render import world_to_pixel

#: catalogue bands and the colour (mag1, mag2) used for each band's colour term
BANDS = ("B", "V", "g", "r", "i")
COLOR_OF_BAND = {"g": ("g", "r"), "r": ("g", "r"), "i": ("g", "r"), "B": ("B", "V"), "V": ("B", "V")}
_SQDEG_PER_SR = (180.0 / math.pi) ** 2


@dataclass(frozen=True)
class StarField:
    """Parameters of the synthetic sky (see the module docstring).

    density: stars per square degree between mag_bright and mag_faint (r band, true magnitudes).
    """

    seed: int
    density: float
    mag_bright: float
    mag_faint: float
    slope: float = 0.3
    cell_deg: float = 0.1

    def __post_init__(self):
        if not self.density >= 0:
            raise ValueError(f"star density must be >= 0, got {self.density}")
        if not self.mag_faint > self.mag_bright:
            raise ValueError(f"mag_faint ({self.mag_faint}) must be fainter than mag_bright ({self.mag_bright})")
        if not 0 < self.cell_deg <= 5:
            raise ValueError(f"cell_deg must be in (0, 5], got {self.cell_deg}")

    # ------------------------------------------------------------------ cells
    def _band_count(self) -> int:
        return int(math.ceil(180.0 / self.cell_deg))

    def _ra_cells(self, j: int) -> int:
        d0 = -90.0 + j * self.cell_deg
        d1 = min(d0 + self.cell_deg, 90.0)
        dmid = math.radians(0.5 * (d0 + d1))
        return max(1, int(math.floor(360.0 * math.cos(dmid) / self.cell_deg)))

    def _cell(self, j: int, i: int) -> dict[str, np.ndarray]:
        d0 = -90.0 + j * self.cell_deg
        d1 = min(d0 + self.cell_deg, 90.0)
        n_ra = self._ra_cells(j)
        ra0 = 360.0 * i / n_ra
        ra1 = 360.0 * (i + 1) / n_ra
        s0, s1 = math.sin(math.radians(d0)), math.sin(math.radians(d1))
        area_sqdeg = (s1 - s0) * math.radians(ra1 - ra0) * _SQDEG_PER_SR
        rng = np.random.default_rng([self.seed, j, i])
        n = int(rng.poisson(self.density * area_sqdeg))
        ra = rng.uniform(ra0, ra1, n)
        dec = np.degrees(np.arcsin(rng.uniform(s0, s1, n)))
        a = self.slope * math.log(10.0)
        e_b, e_f = math.exp(a * self.mag_bright), math.exp(a * self.mag_faint)
        r = np.log(e_b + rng.uniform(0.0, 1.0, n) * (e_f - e_b)) / a
        gr = 0.2 + 1.3 * rng.beta(2.0, 3.0, n)
        ri = 0.02 + 0.40 * gr + rng.normal(0.0, 0.03, n)
        g = r + gr
        i_ = r - ri
        bv = (gr + 0.23) / 1.02
        v = g - 0.60 * bv + 0.12
        b = v + bv
        true = {"B": b, "V": v, "g": g, "r": r, "i": i_}
        frac = np.clip((r - self.mag_bright) / (self.mag_faint - self.mag_bright), 0.0, 1.0)
        err = 0.010 + 0.010 * frac
        out = {
            "id": (np.int64(j) * 100_000 + i) * 100_000 + np.arange(n, dtype=np.int64),
            "ra": ra,
            "dec": dec,
            "err": err,
        }
        for band in BANDS:
            out[f"true_{band}"] = true[band]
            out[f"cat_{band}"] = true[band] + rng.normal(0.0, 1.0, n) * err
        return out

    def _cells_for(self, dec_min: float, dec_max: float, ra_center: float, ra_half: float | None):
        j0 = max(0, int(math.floor((dec_min + 90.0) / self.cell_deg)))
        j1 = min(self._band_count() - 1, int(math.floor((dec_max + 90.0) / self.cell_deg)))
        for j in range(j0, j1 + 1):
            n_ra = self._ra_cells(j)
            if ra_half is None or 2 * ra_half >= 360.0 - 360.0 / n_ra:
                yield from ((j, i) for i in range(n_ra))
                continue
            width = 360.0 / n_ra
            lo = int(math.floor((ra_center - ra_half) / width))
            hi = int(math.floor((ra_center + ra_half) / width))
            seen = set()
            for k in range(lo, hi + 1):
                i = k % n_ra
                if i not in seen:
                    seen.add(i)
                    yield (j, i)

    # ------------------------------------------------------------------ queries
    def stars_near(self, wcs: WCS, width: int, height: int, margin: float) -> dict[str, np.ndarray]:
        """All stars that fall within ``margin`` pixels of the ``width``×``height`` image of ``wcs``, with
        their 0-based pixel coordinates ``x``, ``y`` on that image."""
        xs = np.array([-margin, width / 2, width - 1 + margin])
        ys = np.array([-margin, height / 2, height - 1 + margin])
        gx, gy = np.meshgrid(np.linspace(xs[0], xs[-1], 9), np.linspace(ys[0], ys[-1], 9))
        ra_b, dec_b = wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
        ra_c, dec_c = wcs.all_pix2world([width / 2], [height / 2], 0)
        ra_c, dec_c = float(ra_c[0]), float(dec_c[0])
        pad = 1e-3  # deg, covers the curvature of the box edges
        dec_min, dec_max = float(dec_b.min()) - pad, float(dec_b.max()) + pad
        dra = ((ra_b - ra_c + 180.0) % 360.0) - 180.0
        if dec_max >= 89.9 or dec_min <= -89.9:
            ra_half = None
        else:
            ra_half = float(np.abs(dra).max()) + pad / max(math.cos(math.radians(max(abs(dec_min), abs(dec_max)))), 1e-3)
        parts = [self._cell(j, i) for j, i in self._cells_for(dec_min, dec_max, ra_c, ra_half)]
        parts = [p for p in parts if len(p["ra"])]
        if not parts:
            keys = self._cell(0, 0).keys()
            return {k: np.zeros(0) for k in [*keys, "x", "y"]}
        stars = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        # keep only stars in front of the tangent plane and inside the padded box
        cosd = (np.sin(np.radians(stars["dec"])) * math.sin(math.radians(dec_c))
                + np.cos(np.radians(stars["dec"])) * math.cos(math.radians(dec_c))
                * np.cos(np.radians(stars["ra"] - ra_c)))
        front = cosd > 0.5
        stars = {k: v[front] for k, v in stars.items()}
        x, y = world_to_pixel(wcs, stars["ra"], stars["dec"])
        inside = (x >= -margin) & (x <= width - 1 + margin) & (y >= -margin) & (y <= height - 1 + margin)
        stars = {k: v[inside] for k, v in stars.items()}
        stars["x"], stars["y"] = x[inside], y[inside]
        order = np.argsort(stars["id"], kind="stable")
        return {k: v[order] for k, v in stars.items()}

    def catalog_table(self, stars: dict[str, np.ndarray]) -> Table:
        """Vizier-style table: ID, RAJ2000, DEJ2000, and <band>mag / e_<band>mag for B, V, g, r, i."""
        t = Table()
        t["ID"] = np.asarray(stars["id"], np.int64)
        t["RAJ2000"] = np.asarray(stars["ra"], float)
        t["DEJ2000"] = np.asarray(stars["dec"], float)
        t["RAJ2000"].unit = "deg"
        t["DEJ2000"].unit = "deg"
        for band in BANDS:
            t[f"{band}mag"] = np.round(np.asarray(stars[f"cat_{band}"], float), 4)
            t[f"e_{band}mag"] = np.round(np.asarray(stars["err"], float), 4)
            t[f"{band}mag"].unit = "mag"
            t[f"e_{band}mag"].unit = "mag"
        t.meta["ORIGIN"] = "stdd.synth"
        t.meta["SYNSEED"] = self.seed
        return t


def instrumental_mags(stars: dict[str, np.ndarray], band: str, color_term: float) -> tuple[np.ndarray, np.ndarray]:
    """(true band magnitude, true colour) → instrumental magnitude = band + color_term·colour.

    The colour is g − r for g, r, i frames and B − V for B, V frames."""
    c1, c2 = COLOR_OF_BAND[band]
    color = stars[f"true_{c1}"] - stars[f"true_{c2}"]
    return stars[f"true_{band}"] + color_term * color, color
