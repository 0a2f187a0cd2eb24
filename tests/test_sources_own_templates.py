"""Templates from the observatory's own frames (stdd.sources.own_templates, `stdd templates build`):
real synthetic frames of one field through the real inspect and photometry stages, co-added with
SWarp, then used by the real subtraction stage on a new frame of the field."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner

from stdd.config.settings import CatalogSettings, PipelineSettings, TemplateSettings
from stdd.pipeline import prepare_folder, run_chain
from stdd.sources.own_templates import _background, build_all, read_frame
from stdd.stages.base import StageSettings

synth = pytest.importorskip("stdd.synth")

SIZE = 512
RA, DEC = 150.0, 30.0
#: (seed, FWHM px, pointing offset in RA (deg), transients) of the frames the template is built from
NIGHTS = [(21, 2.4, 0.0, False), (22, 2.7, 0.004, True), (23, 3.0, -0.003, False), (24, 5.0, 0.002, False)]


def _stage_settings(catalog: Path, tmp: Path, template: TemplateSettings) -> StageSettings:
    return StageSettings(catalog=CatalogSettings(source="local", files=[catalog]), template=template,
                         pipeline=PipelineSettings(), cache_dir=tmp / "cache")


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    sky = synth.default_starfield(5, width=SIZE, height=SIZE, n_stars=500)
    folders, fields = [], []
    for seed, fwhm, dra, transient in NIGHTS:
        kw = {}
        if transient:  # a bright one-night transient, clear of stars: the combination must leave it out
            kw["transients"] = [(*_empty_spot(fields[0]), 14.0)]
        else:
            kw["n_transients"] = 0
        fp = synth.make_field(tmp / f"night{seed}", seed=seed, width=SIZE, height=SIZE, ra=RA + dra, dec=DEC,
                              fwhm=fwhm, starfield=sky, template=False, n_cosmics=10, **kw)
        s = _stage_settings(fp.catalog, tmp, TemplateSettings(source="none"))
        folder = tmp / f"work{seed}"
        prepare_folder(fp.frame, folder)
        res = run_chain(folder, s, ["inspect", "photometry"])
        assert res["status"] == "done", res["error"]
        folders.append(folder)
        fields.append(fp)
    return tmp, sky, folders, fields


def test_the_sharp_frames_are_combined_into_a_template_with_its_numbers(nights):
    tmp, _, folders, fields = nights
    infos = [read_frame(f)[0] for f in folders]
    built, skipped = build_all(folders, tmp / "library", min_frames=3, max_frames=7, max_fwhm_ratio=1.5,
                               log=lambda m: None)
    assert skipped == [] and len(built) == 1
    b = built[0]
    # the 5-px frame is more than 1.5x the sharpest (2.4 px): left out; the sharpest gives the grid
    assert len(b.frames) == 3 and b.band == "r"
    sharpest = min(infos, key=lambda i: i.fwhm_arcsec)
    assert b.zp == pytest.approx(sharpest.zp)
    h = fits.getheader(b.path)
    data = fits.getdata(b.path)
    assert h["NCOMBINE"] == 3 and h["FILTER"] == "r" and h["MAGZERO"] == pytest.approx(sharpest.zp, abs=1e-3)
    assert data.shape == (SIZE, SIZE) and b.coverage > 0.9
    # the mean of three frames of gain 2 on about one zero point: about 3² / (3 / 2) = 6 e-/ADU
    assert h["GAIN"] == pytest.approx(9 / sum(10 ** (0.4 * (sharpest.zp - i.zp)) / 2.0 for i in infos[:3]),
                                      rel=0.01)
    assert 5.0 < h["GAIN"] < 7.0
    # ... and that gain describes the template's noise: the sky's scatter is the frames' / √3
    rms = [_background(fits.getdata(f / "image.fits").astype(float), fits.getdata(f / "mask.fits") != 0)[1]
           for f in folders[:3]]
    sky = _background(np.nan_to_num(data).astype(float), ~np.isfinite(data))[1]
    assert sky == pytest.approx(np.sqrt(np.mean(np.square(rms)) / 3), rel=0.15)

    # on the sharpest frame's scale: bright stars have the same aperture flux as in that frame
    ref = sharpest.folder
    img = fits.getdata(ref / "image.fits").astype(float)
    wcs = WCS(fits.getheader(ref / "image.wcs"))
    bad = fits.getdata(ref / "mask.fits") != 0
    img = img - _background(img, bad)[0]
    truth = json.loads(fields[0].truth.read_text())
    stars = [s for s in truth["stars"] if not s["saturated"] and s["mag"] < 17.0]
    x, y = wcs.all_world2pix([s["ra"] for s in stars], [s["dec"] for s in stars], 0)
    inside = (x > 20) & (y > 20) & (x < SIZE - 20) & (y < SIZE - 20)
    assert inside.sum() >= 10
    r = 4 * sharpest.fwhm_arcsec
    f_frame = _aperture(img, x[inside], y[inside], r)
    f_tpl = _aperture(np.nan_to_num(data), x[inside], y[inside], r)
    assert np.median(f_tpl / f_frame) == pytest.approx(1.0, abs=0.04)
    # ... and the one-night transient is not in it: there the template holds what the sharpest
    # frame (without it) holds, to 5 % of the transient's flux (~4 sigma of the noise)
    t = json.loads(fields[1].truth.read_text())["transients"][0]
    tx, ty = wcs.all_world2pix([t["ra"]], [t["dec"]], 0)
    own = _aperture(np.nan_to_num(data), tx, ty, r)[0]
    before = _aperture(img, tx, ty, r)[0]
    assert abs(own - before) < 0.05 * t["flux"], (own, before, t)


def _empty_spot(fp) -> tuple[float, float]:
    """Sky well inside the frame with no star brighter than mag 21 within 25"."""
    stars = json.loads(fp.truth.read_text())["stars"]
    xy = np.array([(s["x"], s["y"]) for s in stars if s["mag"] < 21.0])
    for x in range(60, SIZE - 60, 16):
        for y in range(60, SIZE - 60, 16):
            if np.min(np.hypot(xy[:, 0] - x, xy[:, 1] - y)) > 25:
                w = synth.wcs_from_truth(json.loads(fp.truth.read_text())["wcs"])
                ra, dec = w.all_pix2world([x], [y], 0)
                return float(ra[0]), float(dec[0])
    raise AssertionError("no empty spot on the synthetic frame")


def _aperture(img, x, y, r):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    out = []
    for a, b in zip(np.atleast_1d(x), np.atleast_1d(y)):
        sel = (xx - a) ** 2 + (yy - b) ** 2 <= r * r
        out.append(img[sel].sum())
    return np.array(out)


def test_the_subtraction_finds_a_new_transient_against_the_own_template(nights):
    tmp, sky, folders, fields = nights
    library = tmp / "library2"
    built, _ = build_all(folders, library, log=lambda m: None)
    assert len(built) == 1
    # where one earlier night had a transient (left out of the template), a new one tonight
    t_ra, t_dec = _empty_spot(fields[0])
    fp = synth.make_field(tmp / "tonight", seed=31, width=SIZE, height=SIZE, ra=RA + 0.001, dec=DEC, fwhm=3.2,
                          starfield=sky, template=False, transients=[(t_ra, t_dec, 16.5)], n_cosmics=10)
    s = _stage_settings(fp.catalog, tmp, TemplateSettings(source="local", folder=library, min_overlap=0.5))
    folder = tmp / "tonight-work"
    prepare_folder(fp.frame, folder)
    res = run_chain(folder, s)
    assert res["status"] == "done", res["error"]
    assert res["template"].startswith("local:") and "own_r_" in res["template"]
    assert 0.7 < res["diff_noise_ratio"] < 1.6
    cands = res["candidates_sub"]
    from stdpipe import astrometry as sa

    near = [c for c in cands if sa.spherical_distance(c["ra"], c["dec"], t_ra, t_dec) * 3600 < 2.0]
    assert near and near[0]["snr"] > 8, cands[:5]
    assert near[0]["mag"] == pytest.approx(16.5, abs=0.25)
    # the field's constant stars are gone: at most a handful of other candidates
    assert len(cands) <= 5, [(c["ra"], c["dec"], c["snr"]) for c in cands]


def test_the_command_builds_into_the_library_and_explains_skips(nights, tmp_path):
    from stdd.cli import cli

    tmp, _, folders, _ = nights
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = tmp_path / "stdd.toml"
    cfg.write_text(f'[template]\nfolder = "{tmp_path / "lib"}"\n')
    r = CliRunner().invoke(cli, ["--config", str(cfg), "templates", "build", "--json", *map(str, folders),
                                 str(empty)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["built"]) == 1 and Path(out["built"][0]["path"]).parent == tmp_path / "lib"
    assert any(str(empty) in s and "result.json" in s for s in out["skipped"])
    # too few frames for a field: nothing built, the reason said, exit 1
    r = CliRunner().invoke(cli, ["--config", str(cfg), "templates", "build", "--min-frames", "5",
                                 *map(str, folders)])
    assert r.exit_code == 1 and "good frame(s) of 4, 5 needed" in r.output


def test_unreadable_frames_and_library_files_are_said_with_their_reason(nights, tmp_path):
    import shutil

    _, _, folders, _ = nights
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "own_r_150.0000+30.0000.fits").write_bytes(b"SIMPLE  = not really FITS")  # a damaged file of our name
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "result.json").write_text("{not json")
    lines: list[str] = []
    built, skipped = build_all([*folders, broken], lib, log=lines.append)
    assert len(built) == 1
    assert any(str(broken) in s and "JSONDecodeError" in s and "line 1" in s for s in skipped), skipped
    assert any(str(broken) in m and "skipped" in m for m in lines)
    # the damaged file is left in place (not ours to judge) and said, in the build's notes and its log
    assert (lib / "own_r_150.0000+30.0000.fits").exists()
    assert any("own_r_150.0000+30.0000.fits left in place: unreadable" in n for n in built[0].notes), built[0].notes
    assert any("left in place: unreadable" in m for m in lines)
    # a frame whose image cannot be read fails its field with the frame named
    sharp = tmp_path / "sharp"
    shutil.copytree(folders[0], sharp)
    (sharp / "image.fits").write_bytes((sharp / "image.fits").read_bytes()[:5000])
    lines.clear()
    built, skipped = build_all([sharp, *folders[1:]], tmp_path / "lib2", log=lines.append)
    assert built == [] and any(f"{sharp}: unreadable frame" in s for s in skipped), skipped
    assert any("not built" in m and str(sharp) in m for m in lines)


async def test_the_daemon_builds_own_templates_at_its_hour(nights, tmp_path):
    """template.own_build_hour_utc schedules the job; it reads the result folders and builds in a
    child process, and the outcome is an event."""
    import shutil

    from test_daemon_api import Running, make_settings

    from stdd.daemon import Daemon

    _, _, folders, _ = nights
    s = make_settings(tmp_path, template={"folder": str(tmp_path / "lib"), "own_build_hour_utc": 5})
    results = tmp_path / "var" / "results"
    for i, f in enumerate(folders, 1):
        shutil.copytree(f, results / f"{i}-night{i}.fits")
    async with Running(Daemon(s)) as d:
        assert "own_templates" in d.job_ids()
        out = await d.run_job("own_templates")
        events = [e for e in d.events.recent(50) if e["kind"] == "templates.own"]
    assert len(out["built"]) == 1 and Path(out["built"][0]["path"]).parent == tmp_path / "lib"
    assert Path(out["built"][0]["path"]).is_file() and len(out["built"][0]["frames"]) == 3
    assert events and events[0]["message"].startswith("1 template(s) built from 4 frame folder(s)")


def test_a_rebuild_replaces_the_fields_older_template_and_uncertain_frames_stay_out(nights, tmp_path):
    _, _, folders, _ = nights
    lib = tmp_path / "lib"
    first, _ = build_all(folders[1:], lib, min_frames=2, log=lambda m: None)  # without the sharpest night
    second, _ = build_all(folders, lib, log=lambda m: None)     # it arrives: a new reference frame
    assert first[0].path != second[0].path
    assert sorted(p.name for p in lib.glob("*.fits")) == [second[0].path.name]
    assert f"replaces {first[0].path.name}" in second[0].notes
    # a frame whose zero point is uncertain is not used, and says why
    import shutil

    shaky = tmp_path / "shaky"
    shutil.copytree(folders[0], shaky)
    res = json.loads((shaky / "result.json").read_text())
    res["zp_err"] = 0.2
    (shaky / "result.json").write_text(json.dumps(res))
    info, why = read_frame(shaky)
    assert info is None and "zero point too uncertain (±0.200 mag" in why


def test_at_equal_cover_the_library_prefers_the_own_template(nights, tmp_path):
    from stdd.sources.templates import get_template

    _, _, folders, _ = nights
    lib = tmp_path / "lib"
    (built,), _ = build_all(folders, lib, log=lambda m: None)
    # another reference of the same footprint and band (a survey cut-out, say), sorting after it
    data, h = fits.getdata(built.path), fits.getheader(built.path)
    del h["ORIGIN"]
    fits.PrimaryHDU(data, h).writeto(lib / "zz_survey_r.fits")
    info = read_frame(folders[2])[0]
    w = WCS(fits.getheader(info.folder / "image.wcs"))
    s = TemplateSettings(source="local", folder=lib)
    t = get_template(s, "r", w, (SIZE, SIZE), offline=True, cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert t.source == f"local:{built.path}"
    # a wider cover still wins: the own template cut to a corner loses to the full survey file
    fits.PrimaryHDU(data[: SIZE // 2, : SIZE // 2], fits.getheader(built.path)).writeto(built.path, overwrite=True)
    t = get_template(s, "r", w, (SIZE, SIZE), offline=True, cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert t.source == f"local:{lib / 'zz_survey_r.fits'}"
