"""Reference catalogues: local files or Vizier, normalised to one column convention.

Every catalogue leaves here as a table with `RAJ2000`, `DEJ2000` (degrees) and, for every band it
has, `<band>mag` and `e_<band>mag` (NaN where unknown) — the Vizier convention STDPipe expects.
Local files (FITS, ECSV, Parquet, VOTable, anything astropy reads) with Vizier-style columns
(RAJ2000/DEJ2000 or ra/dec, `<band>mag`, `e_<band>mag` or `<band>mag_err`) work without
configuration; `catalog.columns` maps other names ({"ra": "RA_ICRS", "rmag": "r_psf", ...}).

Vizier is queried through astroquery with a timeout and retries, on a rounded cone (cache.py) so
that a field seen before is read from the disk cache; with `offline = true` it raises OfflineError
before any network call. The result of a query (even an empty one) is cached; a failure is not.
"""
from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from astropy import units as u
from astropy.table import Table, vstack

from ..stages.filters import BANDS
from . import OfflineError, SourceError
from .cache import DiskCache, key_of, round_cone

RA_NAMES = ("RAJ2000", "ra", "RA", "_RAJ2000", "RA_ICRS", "RAdeg", "ALPHA_J2000", "X_WORLD", "raj2000", "Ra")
DEC_NAMES = ("DEJ2000", "dec", "DEC", "Dec", "_DEJ2000", "DE_ICRS", "DEdeg", "DELTA_J2000", "Y_WORLD",
             "dej2000", "decj2000", "DECJ2000")

#: Vizier catalogues used to reject known objects in simple transients (STDWeb's list)
TRANSIENT_CATALOGS = {"gaia": "gaiaedr3", "ps1": "ps1", "skymapper": "skymapper", "des": "II/371/des_dr2"}

Log = Callable[[str], None]


@dataclass
class Catalog:
    table: Table
    source: str
    bands: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.table)


# ---------------------------------------------------------------- normalisation

def _mag_names(band: str) -> list[str]:
    names = [f"{band}mag", f"{band}_mag", f"{band}MAG", f"{band}'mag", f"{band}Mag", f"{band}mag_psf",
             f"{band}PSF", f"{band}MeanPSFMag"]
    if band == "K":
        names += ["Ksmag", "Ks_mag", "KSmag"]
    if band == "G":
        names += ["phot_g_mean_mag"]
    if band == "BP":
        names += ["phot_bp_mean_mag"]
    if band == "RP":
        names += ["phot_rp_mean_mag"]
    return names + [band]


def _err_names(band: str, col: str) -> list[str]:
    return [f"e_{col}", f"{col}_err", f"{col}err", f"e_{band}mag", f"{band}mag_err", f"{band}magerr",
            f"e_{band}", f"{band}_err", f"{band}err", f"err_{band}", f"{band}MeanPSFMagErr", f"e_{band}PSF"]


def _plausible_mag(col) -> bool:
    try:
        v = np.asarray(np.ma.filled(col, np.nan), dtype=float)
    except (TypeError, ValueError):
        return False
    v = v[np.isfinite(v) & (v > -10) & (v < 40)]  # without 99 / -99 placeholders
    return v.size == 0 or (-5 < np.median(v) < 35)


def _to_degrees(col, axis: str, notes: list[str], name: str) -> np.ndarray:
    if col.dtype.kind in "US":  # sexagesimal strings
        from astropy.coordinates import Angle

        unit = u.hourangle if axis == "ra" and any(":" in str(s) or "h" in str(s) for s in col[:5]) else u.deg
        return Angle(np.asarray(col, dtype=str), unit=unit).deg
    values = np.asarray(np.ma.filled(col, np.nan), dtype=float)
    unit = getattr(col, "unit", None)
    if unit is not None and unit.physical_type == "angle" and unit != u.deg:
        limit = {u.rad: 2 * math.pi if axis == "ra" else math.pi / 2}.get(unit)
        if limit is not None and np.nanmax(np.abs(values)) > limit + 1e-6:
            notes.append(f"column {name} says {unit} but holds degrees; read as degrees")
        else:
            values = (values * unit).to_value(u.deg)
    return values


def normalize(table: Table, columns: dict[str, str] | None = None, name: str = "catalogue") -> tuple[Table, list[str], list[str]]:
    """(table with RAJ2000/DEJ2000/<band>mag/e_<band>mag, bands, notes). Raises ValueError without ra/dec."""
    columns = dict(columns or {})
    notes: list[str] = []
    for ours in list(columns):
        if ours in ("RAJ2000", "DEJ2000"):
            columns[{"RAJ2000": "ra", "DEJ2000": "dec"}[ours]] = columns.pop(ours)
    for ours, theirs in columns.items():
        if theirs not in table.colnames:
            raise ValueError(f"{name}: catalog.columns maps {ours!r} to {theirs!r}, which is not a column "
                             f"(columns: {', '.join(table.colnames[:30])})")

    def find(names) -> str | None:
        for n in names:
            if n in table.colnames:
                return n
        return None

    ra_col = columns.get("ra") or find(RA_NAMES)
    dec_col = columns.get("dec") or find(DEC_NAMES)
    if ra_col is None or dec_col is None:
        raise ValueError(f"{name}: no RA/Dec columns (looked for {RA_NAMES[:4]} / {DEC_NAMES[:4]}; "
                         f"map them with catalog.columns); columns are {', '.join(table.colnames[:30])}")
    out = Table()
    out["RAJ2000"] = _to_degrees(table[ra_col], "ra", notes, ra_col) % 360.0
    out["DEJ2000"] = _to_degrees(table[dec_col], "dec", notes, dec_col)
    bands = []
    for band in BANDS:
        col = columns.get(f"{band}mag") or find(_mag_names(band))
        if col is None or col in (ra_col, dec_col) or not _plausible_mag(table[col]):
            continue
        mag = np.asarray(np.ma.filled(table[col], np.nan), dtype=float)
        mag[(mag < -10) | (mag > 40)] = np.nan  # 99 / -99 placeholders
        ecol = columns.get(f"e_{band}mag") or find(_err_names(band, col))
        if ecol is not None:
            err = np.asarray(np.ma.filled(table[ecol], np.nan), dtype=float)
            err[(err < 0) | (err > 10)] = np.nan
        else:
            err = np.full(len(mag), np.nan)
        out[f"{band}mag"] = mag
        out[f"e_{band}mag"] = err
        bands.append(band)
    for extra in ("pmRA", "pmDE", "pmra", "pmdec", "Plx"):
        if extra in table.colnames:
            out[extra] = np.asarray(np.ma.filled(table[extra], np.nan), dtype=float)
    good = np.isfinite(out["RAJ2000"]) & np.isfinite(out["DEJ2000"])
    if not np.all(good):
        notes.append(f"{name}: {np.sum(~good)} rows without coordinates dropped")
        out = out[good]
    out.meta["bands"] = bands
    return out, bands, notes


def cone(table: Table, ra: float, dec: float, radius: float) -> Table:
    """Rows of a normalised table within `radius` degrees of (ra, dec)."""
    if not len(table):
        return table
    d2r = math.pi / 180
    r1, d1 = np.asarray(table["RAJ2000"]) * d2r, np.asarray(table["DEJ2000"]) * d2r
    cosd = (np.sin(d1) * math.sin(dec * d2r) + np.cos(d1) * math.cos(dec * d2r) * np.cos(r1 - ra * d2r))
    return table[cosd >= math.cos(radius * d2r)]


def merge(tables: list[Table]) -> Table:
    if len(tables) == 1:
        return tables[0]
    bands = [b for b in BANDS if any(f"{b}mag" in t.colnames for t in tables)]
    filled = []
    for t in tables:
        t = t.copy()
        for b in bands:
            for c in (f"{b}mag", f"e_{b}mag"):
                if c not in t.colnames:
                    t[c] = np.full(len(t), np.nan)
        filled.append(t)
    out = vstack(filled, join_type="inner", metadata_conflicts="silent")
    out.meta["bands"] = bands
    return out


# ---------------------------------------------------------------- local files

@functools.lru_cache(maxsize=8)
def _read_normalized(path: str, mtime: float, size: int, columns_key: tuple) -> tuple[Table, tuple, tuple]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = Table.read(path, format="parquet") if path.endswith((".parquet", ".pq")) else Table.read(path)
        except Exception as e:  # astropy raises many kinds for unreadable files
            raise ValueError(f"cannot read catalogue {path}: {type(e).__name__}: {e}") from None
    t, bands, notes = normalize(table, dict(columns_key), name=Path(path).name)
    return t, tuple(bands), tuple(notes)


def read_local(path: Path, columns: dict[str, str] | None = None) -> tuple[Table, list[str], list[str]]:
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise SourceError(f"local:{path}", f"cannot open: {e.strerror or e}") from None
    try:
        t, bands, notes = _read_normalized(str(path), st.st_mtime, st.st_size, tuple(sorted((columns or {}).items())))
    except ValueError as e:
        raise SourceError(f"local:{path}", str(e)) from None
    return t, list(bands), list(notes)


def local_catalog(files: list[Path], columns: dict[str, str], ra: float | None, dec: float | None,
                  radius: float | None) -> Catalog:
    """The local files, merged and cut to the cone (all rows when ra is None)."""
    if not files:
        raise SourceError("local", "catalog.source = 'local' but no catalogue file is configured "
                                   "(catalog.files, or --catalog)")
    tables, notes = [], []
    for f in files:
        t, _, n = read_local(Path(f), columns)
        notes += n
        if ra is not None:
            t = cone(t, ra, dec, radius)
        tables.append(t)
    table = merge(tables)
    return Catalog(table, "local:" + ",".join(str(f) for f in files), list(table.meta.get("bands", [])), notes)


# ---------------------------------------------------------------- Vizier

def _vizier_class():
    from astroquery.vizier import VizierClass

    class _Vizier(VizierClass):
        """astroquery's Vizier, able to talk to a mirror given as a full URL (http or https)."""

        base_url: str | None = None

        def _server_to_url(self, return_type="votable"):
            if self.base_url:
                return self.base_url.rstrip("/") + "/viz-bin/" + return_type
            return super()._server_to_url(return_type)

    return _Vizier


def vizier_query(catalog: str, ra: float, dec: float, radius: float, *, timeout: float, retries: int,
                 url: str | None = None, log: Log = print) -> Table:
    """One cone from Vizier as an astropy Table (maybe empty). Raises SourceError when unreachable."""
    from stdpipe import catalogs as scat

    info = scat.catalogs.get(catalog, {})
    vizier_id = info.get("vizier", catalog)
    columns = ["*", "RAJ2000", "DEJ2000", "e_RAJ2000", "e_DEJ2000"] + info.get("extra", [])
    cls = _vizier_class()
    kwargs = dict(columns=columns, row_limit=-1, timeout=timeout)
    if url and "://" not in url:
        kwargs["vizier_server"] = url
    viz = cls(**kwargs)
    if url and "://" in url:
        viz.base_url = url
    from astropy.coordinates import SkyCoord

    last = None
    for attempt in range(retries + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = viz.query_region(SkyCoord(ra, dec, unit="deg"), radius=radius * u.deg,
                                       catalog=vizier_id, cache=False)
            break
        except Exception as e:  # requests/astroquery raise a variety; all mean "not delivered"
            last = e
            log(f"vizier {vizier_id}: attempt {attempt + 1} failed: {type(e).__name__}: {e}")
            if attempt < retries:
                time.sleep(min(2.0 ** attempt, 10.0))
    else:
        raise SourceError(f"vizier:{catalog}",
                          f"unreachable after {retries + 1} attempt(s): {type(last).__name__}: {last}")
    if not res or len(res) == 0:
        return Table({"RAJ2000": np.zeros(0), "DEJ2000": np.zeros(0)})
    t = res[0]
    if "_RAJ2000" in t.colnames and "RAJ2000" not in t.colnames:
        t.rename_columns(["_RAJ2000", "_DEJ2000"], ["RAJ2000", "DEJ2000"])
    if catalog in scat.catalogs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                scat.augment_cat_bands(t, catalog=catalog)
            except Exception as e:  # augmentation is a bonus; keep the measured bands
                log(f"vizier {catalog}: band augmentation failed: {e}")
    return t


def vizier_catalog(catalog: str, ra: float, dec: float, radius: float, *, offline: bool, cache_dir: Path,
                   timeout: float, retries: int, url: str | None = None, columns: dict | None = None,
                   log: Log = print) -> Catalog:
    source = f"vizier:{catalog}"
    if offline:
        raise OfflineError(source)
    ra_c, dec_c, r_c = round_cone(ra, dec, radius)
    cache = DiskCache(cache_dir, "catalogs")
    key = key_of("vizier", catalog, ra_c, dec_c, r_c)
    hit = cache.get(key, ".fits")
    notes = []
    if hit is None:
        log(f"{source}: querying cone {ra_c:.4f} {dec_c:+.4f} r={r_c:.3f} deg")
        raw = vizier_query(catalog, ra_c, dec_c, r_c, timeout=timeout, retries=retries, url=url, log=log)
        try:
            table, bands, notes = normalize(raw, columns, name=source)
        except ValueError as e:
            raise SourceError(source, str(e)) from None
        cache.write(key, ".fits", lambda p: table.write(p, format="fits", overwrite=True))
    else:
        log(f"{source}: cone {ra_c:.4f} {dec_c:+.4f} r={r_c:.3f} from the cache")
        table = Table.read(hit)
    table = cone(table, ra, dec, radius)
    bands = [b for b in BANDS if f"{b}mag" in table.colnames]
    table.meta = {"bands": bands}
    return Catalog(table, source, bands, notes)


def get_catalog(settings, ra: float | None, dec: float | None, radius: float | None, *, band: str | None,
                offline: bool, cache_dir: Path, files: list[Path] | None = None,
                log: Log = print) -> Catalog:
    """The reference catalogue for a cone, from the configured source (CatalogSettings)."""
    if files or settings.source == "local":
        return local_catalog(list(files or settings.files), settings.columns, ra, dec, radius)
    from ..stages.filters import suggest_catalog

    name = settings.vizier_catalog or suggest_catalog(band or "r", dec if dec is not None else 0.0)
    if ra is None:
        raise SourceError(f"vizier:{name}", "no sky position to query around (the frame has no WCS)")
    return vizier_catalog(name, ra, dec, radius, offline=offline, cache_dir=cache_dir,
                          timeout=settings.timeout_seconds, retries=settings.retries,
                          url=settings.vizier_url, columns=settings.columns, log=log)


def transient_catalogs(settings, dec: float) -> list[str]:
    """Vizier catalogues to reject known objects with (STDWeb's choice unless configured)."""
    names = list(settings.transient_catalogs)
    if names != ["auto"]:
        return names
    out = [TRANSIENT_CATALOGS["gaia"]]
    if dec > -30:
        out.append(TRANSIENT_CATALOGS["ps1"])
    if dec < 0:
        out += [TRANSIENT_CATALOGS["skymapper"], TRANSIENT_CATALOGS["des"]]
    return out
