"""Local catalogues a candidate is checked against: variable stars and stars with large proper
motions (STDWeb users asked for both, STDWeb issue #15). Files are read once (astropy Table: FITS,
VOTable, ECSV, CSV, Parquet) and kept by path and mtime."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..store.measurements import separation_deg

RA_COLS = ("RAJ2000", "ra", "RA_ICRS", "RAdeg", "RA")
DEC_COLS = ("DEJ2000", "dec", "DE_ICRS", "DEdeg", "DEC", "Dec")
NAME_COLS = ("name", "Name", "OID", "VSX", "GCVS", "source_id", "id")
PMRA_COLS = ("pmRA", "pmra", "pm_ra")
PMDE_COLS = ("pmDE", "pmdec", "pm_dec")


def _col(t, names):
    for n in names:
        if n in t.colnames:
            return n
    return None


@lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> dict:
    from astropy.table import Table

    t = Table.read(path)
    ra, dec = _col(t, RA_COLS), _col(t, DEC_COLS)
    if ra is None or dec is None:
        raise ValueError(f"{path}: no RA/Dec columns (one of {', '.join(RA_COLS)} and {', '.join(DEC_COLS)})")
    out = {"ra": np.asarray(t[ra], float), "dec": np.asarray(t[dec], float)}
    name = _col(t, NAME_COLS)
    out["name"] = [str(x) for x in t[name]] if name else [None] * len(t)
    pmra, pmde = _col(t, PMRA_COLS), _col(t, PMDE_COLS)
    if pmra and pmde:
        out["pmra"] = np.nan_to_num(np.asarray(t[pmra], float))
        out["pmde"] = np.nan_to_num(np.asarray(t[pmde], float))
        out["epoch"] = np.asarray(t["epoch"], float) if "epoch" in t.colnames else np.full(len(t), 2016.0)
    return out


def catalogue(path: Path) -> dict:
    p = Path(path)
    return _load(str(p), p.stat().st_mtime)


def catalogue_state(store, ra: float, dec: float, mjd: float | None) -> dict | None:
    """{"state": "known variable" | "high proper motion", "catalog", "name", "sep_arcsec"} for the
    first catalogue star within `store.catalog_match_arcsec`, else None."""
    r = store.catalog_match_arcsec
    for path in store.variable_catalogs:
        try:
            c = catalogue(path)
        except (OSError, ValueError):
            continue
        sep = separation_deg(ra, dec, c["ra"], c["dec"]) * 3600
        i = int(np.argmin(sep)) if len(sep) else -1
        if i >= 0 and sep[i] <= r:
            return {"state": "known variable", "catalog": Path(path).name, "name": c["name"][i],
                    "sep_arcsec": round(float(sep[i]), 2)}
    year = 2000.0 + ((mjd or 51544.5) - 51544.5) / 365.25
    for path in store.proper_motion_catalogs:
        try:
            c = catalogue(path)
        except (OSError, ValueError):
            continue
        if "pmra" not in c:
            continue
        pm = np.hypot(c["pmra"], c["pmde"])
        fast = pm >= store.high_proper_motion_mas
        if not fast.any():
            continue
        dt = year - c["epoch"][fast]
        cosd = np.cos(np.radians(c["dec"][fast]))
        ra_now = c["ra"][fast] + c["pmra"][fast] * dt / 3.6e6 / np.maximum(cosd, 1e-6)
        dec_now = c["dec"][fast] + c["pmde"][fast] * dt / 3.6e6
        sep = separation_deg(ra, dec, ra_now, dec_now) * 3600
        i = int(np.argmin(sep))
        if sep[i] <= r:
            names = [n for n, f in zip(c["name"], fast) if f]
            return {"state": "high proper motion", "catalog": Path(path).name, "name": names[i],
                    "sep_arcsec": round(float(sep[i]), 2), "pm_mas": round(float(pm[fast][i]), 1)}
    return None
