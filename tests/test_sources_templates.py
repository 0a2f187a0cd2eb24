"""Template sources: a local library chosen by footprint and band, one custom file, surveys offline."""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from stdd.config.settings import TemplateSettings
from stdd.sources import OfflineError, SourceError
from stdd.sources.templates import get_template, overlap_fraction

synth = pytest.importorskip("stdd.synth")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    d = tmp_path_factory.mktemp("lib")
    infos = synth.make_template_library(d / "templates", ra=150.0, dec=30.0, width=256, height=256, n_stars=200,
                                        seed=3)
    fp = synth.make_field(d / "frame", ra=150.0, dec=30.0, width=256, height=256, n_stars=200, seed=3,
                          template=False, n_transients=0, n_cosmics=0)
    with fits.open(fp.frame) as h:
        wcs = WCS(h[0].header)
    return d, infos, wcs


def test_local_library_picks_the_covering_template_of_the_band(library):
    d, infos, wcs = library
    s = TemplateSettings(source="local", folder=d / "templates")
    t = get_template(s, "r", wcs, (256, 256), offline=True, cache_dir=d / "cache", log=lambda *a: None)
    field = next(i for i in infos if i.role == "field" and i.band == "r")
    assert t is not None and t.source == f"local:{field.path}"
    assert t.image.shape == (256, 256) and np.isfinite(t.image).mean() > 0.99
    assert t.gain == pytest.approx(8.0)  # the library template's effective gain (depth 4 x gain 2)
    g = get_template(s, "g", wcs, (256, 256), offline=True, cache_dir=d / "cache", log=lambda *a: None)
    assert g.source.endswith("_g.fits")
    assert get_template(s, "i", wcs, (256, 256), offline=True, cache_dir=d / "cache", log=lambda *a: None) is None
    # the header index is cached, and refreshed when the folder changes
    index = list((d / "cache" / "templates").glob("index-*.json"))
    assert len(index) == 1
    entries = json.loads(index[0].read_text())["entries"]
    assert len(entries) == len(infos)


def test_overlap_fractions(library):
    d, infos, wcs = library
    s = TemplateSettings(source="local", folder=d / "templates")
    get_template(s, "r", wcs, (256, 256), offline=True, cache_dir=d / "cache", log=lambda *a: None)
    index = next((d / "cache" / "templates").glob("index-*.json"))
    by_role = {}
    for e in json.loads(index.read_text())["entries"]:
        info = next(i for i in infos if str(i.path) == e["path"])
        by_role[(info.role, info.band)] = overlap_fraction(e["corners"], wcs, (256, 256))
    assert by_role[("field", "r")] == pytest.approx(1.0)
    assert 0.2 < by_role[("overlap", "r")] < 0.6
    assert by_role[("disjoint", "r")] == 0.0


def test_custom_template_and_errors(library, tmp_path):
    d, infos, wcs = library
    field = next(i for i in infos if i.role == "field" and i.band == "r")
    t = get_template(TemplateSettings(source="custom", file=field.path), "r", wcs, (256, 256), offline=True,
                     cache_dir=tmp_path, log=lambda *a: None)
    assert t.source == f"custom:{field.path}"
    with pytest.raises(SourceError, match="not found"):
        get_template(TemplateSettings(source="custom", file=tmp_path / "nope.fits"), "r", wcs, (256, 256),
                     offline=True, cache_dir=tmp_path, log=lambda *a: None)
    fits.writeto(tmp_path / "nowcs.fits", np.zeros((32, 32), "f4"))
    with pytest.raises(SourceError, match="no celestial WCS"):
        get_template(TemplateSettings(source="custom", file=tmp_path / "nowcs.fits"), "r", wcs, (256, 256),
                     offline=True, cache_dir=tmp_path, log=lambda *a: None)
    assert get_template(TemplateSettings(source="none"), "r", wcs, (256, 256), offline=True, cache_dir=tmp_path,
                        log=lambda *a: None) is None


@pytest.mark.parametrize("survey,hips", [("ps1", None), ("ls", None), ("hips", "CDS/P/DSS2/red"), ("auto", None)])
def test_surveys_are_not_contacted_offline(library, tmp_path, survey, hips):
    _, _, wcs = library
    with pytest.raises(OfflineError) as e:
        get_template(TemplateSettings(source="survey", survey=survey, hips=hips), "r", wcs, (256, 256),
                     offline=True, cache_dir=tmp_path, log=lambda *a: None)
    assert e.value.source.startswith("survey:") and "offline" in str(e.value)
    assert not (tmp_path / "templates").exists()


def test_a_library_file_with_an_unreadable_wcs_is_left_out_with_its_reason(library, tmp_path):
    import shutil

    d, infos, wcs = library
    lib = tmp_path / "templates"
    shutil.copytree(d / "templates", lib)
    field = next(i for i in infos if i.role == "field" and i.band == "r")
    h = fits.getheader(field.path)
    h["CTYPE1"], h["CTYPE2"] = "RA---XYZ", "DEC--XYZ"  # a projection wcslib does not know
    fits.writeto(lib / "broken_r.fits", np.zeros((32, 32), "f4"), h)
    for attempt in ("indexed", "from the index cache"):
        lines = []
        t = get_template(TemplateSettings(source="local", folder=lib), "r", wcs, (256, 256), offline=True,
                         cache_dir=tmp_path / "cache", log=lines.append)
        said = [m for m in lines if "broken_r.fits" in m]
        assert said and "unreadable WCS" in said[0] and "Unrecognized projection code (XYZ in CTYPE1)" in said[0], \
            (attempt, lines)
        assert t.source == f"local:{lib / field.path.name}"
        assert any("could not be read" in n and "broken_r.fits skipped: unreadable WCS" in n for n in t.notes), t.notes
    index = json.loads(next((tmp_path / "cache" / "templates").glob("index-*.json")).read_text())
    assert len(index["entries"]) == len(infos) and len(index["skipped"]) == 1
