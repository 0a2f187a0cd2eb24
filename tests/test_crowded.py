"""Crowded fields (issue 15, part 5): a synthetic 1024² frame with 10,000 stars (FWHM 3 px) against
an uncrowded one of the same sky. Blended and contaminated detections are flagged (0x4000: a
comparable neighbour within 2 FWHM; 0x2000: an unresolved catalogue pair; SExtractor's 0x02) and
kept out of the WCS fit and the zero point: the unflagged stars' astrometric residuals (14 < r < 18)
stay at the uncrowded frame's level, well under 0.15″, and the zero point does not move."""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

from stdd.pipeline import prepare_folder, run_chain
from stdd.stages.base import StageSettings

synth = pytest.importorskip("stdd.synth")


def residuals(tmp, n_stars: int) -> dict:
    out = tmp / f"field{n_stars}"
    synth.make_field(out, seed=5, width=1024, height=1024, n_stars=n_stars, fwhm=3.0, n_transients=0, n_cosmics=0,
                     template=False, wcs_error_arcsec=1.0, zp=27.0)
    st = StageSettings.model_validate({"catalog": {"source": "local", "files": [str(out / "catalog.fits")]},
                                       "template": {"source": "none"}, "cache_dir": str(tmp / "cache")})
    work = tmp / f"work{n_stars}"
    prepare_folder(out / "frame.fits", work)
    res = run_chain(work, st, ["inspect", "photometry"])
    assert res["status"] == "done", res["error"]
    truth = np.array([(s["ra"], s["dec"], s["mag"]) for s in json.loads((out / "truth.json").read_text())["stars"]])
    o = Table.read(work / "objects.fits")
    idx, sep, _ = SkyCoord(o["ra"], o["dec"], unit="deg").match_to_catalog_sky(
        SkyCoord(truth[:, 0], truth[:, 1], unit="deg"))
    mag = truth[idx, 2]
    sel = (sep.arcsec < 1.5) & (mag > 14) & (mag < 18)
    flags = np.asarray(o["flags"])
    clean = (flags & (0x4000 | 0x2000 | 0x02)) == 0

    def rms(b):
        dra = (np.asarray(o["ra"])[b] - truth[idx[b], 0]) * np.cos(np.radians(truth[idx[b], 1])) * 3600
        ddec = (np.asarray(o["dec"])[b] - truth[idx[b], 1]) * 3600
        return float(np.sqrt(np.mean(dra ** 2 + ddec ** 2)))

    return {"all": rms(sel), "clean": rms(sel & clean), "n_clean": int((sel & clean).sum()),
            "n_flagged": int((flags & 0x4000 != 0).sum()), "zp": res["zp"], "zp_err": res["zp_err"],
            "log": (work / "photometry.log").read_text()}


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crowded")
    return residuals(tmp, 10_000), residuals(tmp, 1_000)


def test_blends_are_flagged_and_kept_out_of_the_astrometry(fields):
    crowded, sparse = fields
    assert crowded["n_flagged"] > 200 and "flag 0x4000" in crowded["log"]
    # every star (blends included) is pulled by its neighbours: what the flags are for
    assert crowded["all"] > 1.5 * crowded["clean"]
    # the unflagged stars: at the uncrowded frame's level and under 0.15"
    assert crowded["n_clean"] > 300
    assert crowded["clean"] <= 0.15
    assert crowded["clean"] <= 1.3 * sparse["clean"]


def test_the_zero_point_is_not_pulled(fields):
    crowded, sparse = fields
    assert abs(crowded["zp"] - sparse["zp"]) < 3 * np.hypot(crowded["zp_err"], sparse["zp_err"]) + 0.005
