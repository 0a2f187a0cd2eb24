"""Candidates on known objects (STDWeb users' request, its issue #15): a variable star of a local
catalogue, and a high-proper-motion star found where its proper motion has carried it by the
frame's epoch — not where the catalogue put it."""
from __future__ import annotations

import math

from astropy.table import Table

from stdd.candidates.catalogs import catalogue_state
from stdd.config.store_settings import StoreSettings


def test_variables_and_high_proper_motion_stars(tmp_path):
    var = tmp_path / "vsx.fits"
    Table({"RAJ2000": [150.0], "DEJ2000": [30.0], "Name": ["V1234 Syn"]}).write(var)
    pm = tmp_path / "pm.ecsv"
    # 2000 mas/yr east from epoch 2016.0; by 2026.2 it has moved 20.4" in RA
    Table({"ra": [150.1, 150.2], "dec": [30.0, 30.0], "pmra": [2000.0, 20.0], "pmdec": [0.0, 0.0],
           "name": ["Fast star", "Slow star"]}).write(pm)
    s = StoreSettings(variable_catalogs=[var], proper_motion_catalogs=[pm], catalog_match_arcsec=2.0)
    mjd_2026 = 51544.5 + 26.2 * 365.25
    hit = catalogue_state(s, 150.0 + 0.5 / 3600, 30.0, mjd_2026)
    assert hit["state"] == "known variable" and hit["name"] == "V1234 Syn" and hit["sep_arcsec"] < 1
    moved = 150.1 + 2000 * 10.2 / 3.6e6 / math.cos(math.radians(30))
    hit = catalogue_state(s, moved, 30.0, mjd_2026)
    assert hit["state"] == "high proper motion" and hit["name"] == "Fast star" and hit["pm_mas"] == 2000.0
    assert catalogue_state(s, 150.1, 30.0, mjd_2026) is None  # its catalogue position is empty by now
    assert catalogue_state(s, 150.2, 30.0, mjd_2026) is None  # 20 mas/yr: not a high-proper-motion star
    assert catalogue_state(s, 151.0, 30.0, mjd_2026) is None
