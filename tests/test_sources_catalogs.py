"""Catalogue sources: local files in every format, column maps, cones; Vizier through a local stand-in."""
from __future__ import annotations

import io
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from stdd.config.settings import CatalogSettings
from stdd.sources import OfflineError, SourceError
from stdd.sources import catalogs as C
from stdd.sources.cache import round_cone


def _table(n=50, seed=0) -> Table:
    rng = np.random.default_rng(seed)
    t = Table()
    t["RAJ2000"] = 150.0 + rng.uniform(-0.2, 0.2, n)
    t["DEJ2000"] = 30.0 + rng.uniform(-0.2, 0.2, n)
    t["rmag"] = rng.uniform(12, 20, n)
    t["e_rmag"] = np.full(n, 0.02)
    t["gmag"] = t["rmag"] + 0.5
    return t


@pytest.mark.parametrize("fmt,suffix", [("fits", ".fits"), ("ascii.ecsv", ".ecsv"), ("parquet", ".parquet"),
                                        ("votable", ".xml")])
def test_local_formats_without_configuration(tmp_path, fmt, suffix):
    path = tmp_path / f"cat{suffix}"
    _table().write(path, format=fmt)
    cat = C.local_catalog([path], {}, 150.0, 30.0, 0.1)
    assert cat.bands == ["g", "r"]
    assert {"RAJ2000", "DEJ2000", "rmag", "e_rmag", "gmag", "e_gmag"} <= set(cat.table.colnames)
    d = np.degrees(np.arccos(np.sin(np.radians(cat.table["DEJ2000"])) * math.sin(math.radians(30))
                             + np.cos(np.radians(cat.table["DEJ2000"])) * math.cos(math.radians(30))
                             * np.cos(np.radians(cat.table["RAJ2000"] - 150))))
    assert len(cat.table) > 0 and np.all(d <= 0.1 + 1e-9)
    assert np.all(np.isnan(cat.table["e_gmag"]))  # no error column: NaN, not a made-up number


def test_ra_dec_names_units_and_sentinels(tmp_path):
    t = Table()
    t["ra"] = np.radians([150.0, 150.01]) * u.rad
    t["dec"] = np.radians([30.0, 30.01]) * u.rad
    t["rmag"] = [15.0, 99.0]
    t["rmag_err"] = [0.01, 0.02]
    path = tmp_path / "rad.fits"
    t.write(path)
    cat = C.local_catalog([path], {}, 150.0, 30.0, 0.1)
    assert np.allclose(cat.table["RAJ2000"], [150.0, 150.01])
    assert math.isnan(cat.table["rmag"][1])  # 99 is "no measurement"
    assert cat.table["e_rmag"][0] == pytest.approx(0.01)


def test_degrees_mislabelled_as_radians_are_recognised(tmp_path, shared_data):
    cat = C.local_catalog([shared_data / "catalogs" / "sdss_refcat_EGS_215-216_52.6-53.6.fits"], {},
                          215.5, 53.1, 0.05)
    assert len(cat.table) > 100
    assert any("degrees" in n for n in cat.notes)
    assert set("ugriz") <= set(cat.bands)


def test_column_map(tmp_path):
    t = Table({"RA_deg": [150.0], "Dec_deg": [30.0], "R_psf": [14.2], "R_psf_sigma": [0.03]})
    path = tmp_path / "odd.ecsv"
    t.write(path)
    with pytest.raises(SourceError, match="no RA/Dec columns"):
        C.local_catalog([path], {}, 150.0, 30.0, 0.1)
    cat = C.local_catalog([path], {"ra": "RA_deg", "dec": "Dec_deg", "rmag": "R_psf", "e_rmag": "R_psf_sigma"},
                          150.0, 30.0, 0.1)
    assert cat.table["rmag"][0] == pytest.approx(14.2) and cat.table["e_rmag"][0] == pytest.approx(0.03)
    with pytest.raises(SourceError, match="not a column"):
        C.local_catalog([path], {"ra": "nope", "dec": "Dec_deg"}, 150.0, 30.0, 0.1)


def test_several_files_merge(tmp_path):
    a, b = _table(20, 1), _table(20, 2)
    b.remove_column("gmag")
    b["imag"] = b["rmag"] - 0.3
    a.write(tmp_path / "a.fits")
    b.write(tmp_path / "b.fits")
    cat = C.local_catalog([tmp_path / "a.fits", tmp_path / "b.fits"], {}, None, None, None)
    assert len(cat.table) == 40 and cat.bands == ["g", "r", "i"]
    assert np.isnan(cat.table["imag"][:20]).all() and np.isfinite(cat.table["imag"][20:]).all()


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(SourceError, match="cannot open"):
        C.local_catalog([tmp_path / "missing.fits"], {}, 150, 30, 0.1)
    (tmp_path / "bad.fits").write_text("not a table")
    with pytest.raises(SourceError, match="cannot read catalogue"):
        C.local_catalog([tmp_path / "bad.fits"], {}, 150, 30, 0.1)
    with pytest.raises(SourceError, match="no catalogue file"):
        C.get_catalog(CatalogSettings(source="local"), 150, 30, 0.1, band="r", offline=True, cache_dir=tmp_path)


@pytest.mark.parametrize("ra,dec,r", [(150.0, 30.0, 0.1), (359.99, 0.0, 0.3), (12.3, 89.9, 0.5), (200.0, -45.0, 2.0)])
def test_round_cone_covers_the_cone(ra, dec, r):
    rc, dc, rr = round_cone(ra, dec, r)
    d = math.degrees(math.acos(min(1, math.sin(math.radians(dec)) * math.sin(math.radians(dc))
                                   + math.cos(math.radians(dec)) * math.cos(math.radians(dc))
                                   * math.cos(math.radians(ra - rc)))))
    assert d + r <= rr + 1e-9
    # a slightly different pointing of the same field gives the same cone
    assert round_cone(ra + 0.2 * r / max(math.cos(math.radians(dec)), 0.01) * 0.01, dec, r)[2] == rr


# ---------------------------------------------------------------- Vizier, against a local stand-in

class _Vizier:
    """A local HTTP server answering Vizier's votable queries with a fixed table; counts requests."""

    def __init__(self, table: Table, name: str, status: int = 200):
        from astropy.io.votable import from_table, writeto

        vot = from_table(table)
        vot.resources[0].tables[0].name = name
        buf = io.BytesIO()
        writeto(vot, buf)
        body = buf.getvalue()
        self.requests: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                outer.requests.append(self.rfile.read(n).decode())
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vizier():
    srv = _Vizier(_table(), "II/349/ps1")
    yield srv
    srv.close()


def test_vizier_query_normalised_and_cached(tmp_path, vizier):
    s = CatalogSettings(source="vizier", vizier_catalog="ps1", vizier_url=vizier.url, timeout_seconds=5, retries=0)
    cat = C.get_catalog(s, 150.0, 30.0, 0.1, band="r", offline=False, cache_dir=tmp_path)
    assert cat.source == "vizier:ps1" and cat.bands[:2] == ["g", "r"]
    assert len(vizier.requests) == 1 and "-source=II/349/ps1" in vizier.requests[0]
    # the same field again, pointed a little differently: from the disk cache
    cat2 = C.get_catalog(s, 150.001, 30.001, 0.1, band="r", offline=False, cache_dir=tmp_path)
    assert len(vizier.requests) == 1
    assert len(cat2.table) > 0


def test_vizier_offline_makes_no_call(tmp_path, vizier):
    s = CatalogSettings(source="vizier", vizier_catalog="ps1", vizier_url=vizier.url)
    with pytest.raises(OfflineError) as e:
        C.get_catalog(s, 150.0, 30.0, 0.1, band="r", offline=True, cache_dir=tmp_path)
    assert "offline" in str(e.value) and e.value.source == "vizier:ps1"
    assert vizier.requests == []


def test_vizier_unreachable_is_named(tmp_path):
    srv = _Vizier(_table(), "x")
    url = srv.url
    srv.close()  # nothing listens there any more
    s = CatalogSettings(source="vizier", vizier_catalog="apass", vizier_url=url, timeout_seconds=2, retries=1)
    with pytest.raises(SourceError) as e:
        C.get_catalog(s, 150.0, 30.0, 0.1, band="r", offline=False, cache_dir=tmp_path)
    assert e.value.source == "vizier:apass" and "unreachable after 2 attempt(s)" in str(e.value)


def test_vizier_suggestion_by_band_and_dec():
    from stdd.stages.filters import suggest_catalog

    assert suggest_catalog("V", 10) == "gaiadr3syn"
    assert suggest_catalog("r", 10) == "ps1" and suggest_catalog("r", -40) == "skymapper"
    assert suggest_catalog("K", -10) == "vhs" and suggest_catalog("K", 10) == "2mass"
    assert C.transient_catalogs(CatalogSettings(), -10) == ["gaiaedr3", "ps1", "skymapper", "II/371/des_dr2"]
