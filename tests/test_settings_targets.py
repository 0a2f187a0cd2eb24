"""STDWeb's targets: header TARGET/OBJECT, pixel targets, names through Sesame then TNS (local stand-ins of
their published APIs), the on-disk name cache, the offline outcome, centroid_targets, target.vot."""
from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from stdd.config.settings import CatalogSettings, PipelineSettings
from stdd.pipeline import prepare_folder, run_chain
from stdd.sources import names
from stdd.stages.base import StageSettings
from stdd.synth import make_field

SESAME_FOUND = """<?xml version="1.0" encoding="UTF-8" ?>
<Sesame xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xsi:noNamespaceSchemaLocation="http://vizier.cds.unistra.fr/xml/sesame_4x.xsd">
<Target option="SNV">
  <name>{name}</name>
  <Resolver name="S=Simbad (via url):    1">
    <INFO>from cache</INFO>
    <otype>*</otype>
    <jpos>10:00:00.00 +30:00:00.0</jpos>
    <jradeg>{ra}</jradeg>
    <jdedeg>{dec}</jdedeg>
    <oname>{oname}</oname>
  </Resolver>
</Target>
</Sesame>
"""
SESAME_NOTHING = """<?xml version="1.0" encoding="UTF-8" ?>
<Sesame xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<Target option="SNV">
  <name>{name}</name>
  <INFO>*** Nothing found *** </INFO>
</Target>
</Sesame>
"""


class StandIn:
    """A local Sesame (GET <base>/-ox/SNV?<name>) and TNS bot API (POST /api/get/search, /api/get/object)."""

    def __init__(self, sesame: dict[str, tuple[float, float]], tns: dict[str, tuple[float, float]], api_key: str):
        self.sesame, self.tns, self.api_key = sesame, tns, api_key
        self.requests: list[tuple[str, str, dict]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body: bytes, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path, _, query = self.path.partition("?")
                stand_in.requests.append(("GET", path, {"query": query}))
                if path != "/sesame/-ox/SNV":
                    return self._send(404, b"no", "text/plain")
                name = urllib.parse.unquote(query)
                if name in stand_in.sesame:
                    ra, dec = stand_in.sesame[name]
                    body = SESAME_FOUND.format(name=name, ra=ra, dec=dec, oname=name.upper())
                else:
                    body = SESAME_NOTHING.format(name=name)
                self._send(200, body.encode(), "text/xml")

            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                ua = self.headers.get("User-Agent", "")
                stand_in.requests.append(("POST", self.path, {"ua": ua, **{k: v[0] for k, v in form.items()}}))
                if not ua.startswith("tns_marker") or form.get("api_key", [""])[0] != stand_in.api_key:
                    return self._send(401, json.dumps({"id_code": 401, "id_message": "Unauthorized"}).encode(),
                                      "application/json")
                data = json.loads(form["data"][0])
                obj = data.get("objname")
                if self.path == "/api/get/search":
                    reply = [{"objname": obj, "prefix": "SN", "objid": 1}] if obj in stand_in.tns else []
                elif self.path == "/api/get/object" and obj in stand_in.tns:
                    ra, dec = stand_in.tns[obj]
                    reply = {"objname": obj, "name_prefix": "SN", "radeg": ra, "decdeg": dec,
                             "ra": "10:00:00", "dec": "+30:00:00"}
                else:
                    reply = {}
                body = {"id_code": 200, "id_message": "OK", "data": {"received_data": data, "reply": reply}}
                self._send(200, json.dumps(body).encode(), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def catalog(self, **kw) -> CatalogSettings:
        return CatalogSettings(sesame_url=self.url + "/sesame", tns_url=self.url, tns_bot_id=1234,
                               tns_bot_name="stdd-test", **kw)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("field")
    return make_field(d, seed=12, width=512, height=512, n_stars=400, template=False, n_transients=0,
                      n_cosmics=0)


@pytest.fixture(scope="module")
def bright(field):
    """Two bright, unsaturated, isolated stars of the frame."""
    stars = [s for s in field.truth_data["stars"] if not s["saturated"] and 40 < s["x"] < 470 and 40 < s["y"] < 470]
    stars.sort(key=lambda s: s["mag"])
    xy = np.array([[s["x"], s["y"]] for s in field.truth_data["stars"]])
    out = []
    for s in stars:
        d = np.hypot(xy[:, 0] - s["x"], xy[:, 1] - s["y"])
        if np.sum(d < 15) == 1:
            out.append(s)
        if len(out) == 2:
            return out
    raise AssertionError("no isolated bright star")


@pytest.fixture
def stand_in(field, bright, monkeypatch):
    monkeypatch.setenv("TNS_API_KEY", "secret-key")
    s = StandIn({"Star One": (bright[0]["ra"], bright[0]["dec"])}, {"2026abc": (bright[1]["ra"], bright[1]["dec"])},
                "secret-key")
    yield s
    s.server.shutdown()


def _frame(tmp_path: Path, field, **cards) -> Path:
    data, header = fits.getdata(field.frame), fits.getheader(field.frame)
    for k, v in cards.items():
        if v is None:
            header.remove(k, ignore_missing=True)
        else:
            header[k] = v
    p = tmp_path / "frame.fits"
    fits.writeto(p, data, header, overwrite=True)
    return p


def _run(folder: Path, src: Path, cache: Path, *, catalog=None, offline=True, steps=("inspect",), **pipeline):
    prepare_folder(src, folder)
    s = StageSettings(pipeline=PipelineSettings(**pipeline), catalog=catalog or CatalogSettings(), offline=offline,
                      cache_dir=cache)
    res = run_chain(folder, s, steps=list(steps))
    state = json.loads((folder / "inspect.json").read_text()) if (folder / "inspect.json").exists() else None
    return res, state


def test_header_target_offline_is_an_outcome_then_resolved_and_cached(tmp_path, field, bright, stand_in):
    src = _frame(tmp_path, field, TARGET="Star One")
    cache = tmp_path / "cache"
    # offline and not cached: recorded, named, not measured; the frame is still processed
    res, state = _run(tmp_path / "w1", src, cache)
    assert res["status"] == "done", res["error"]
    assert res["target_outcomes"] == [{"name": "Star One", "source": "header", "outcome": "offline"}]
    assert any("'Star One'" in n and "offline" in n for n in res["notes"])
    assert state["targets"] == []
    # online: Sesame's answer
    res, state = _run(tmp_path / "w2", src, cache, catalog=stand_in.catalog(), offline=False)
    assert res["target_outcomes"] == [{"name": "Star One", "source": "header", "outcome": "sesame"}]
    (t,) = state["targets"]
    assert (t["ra"], t["dec"]) == pytest.approx((bright[0]["ra"], bright[0]["dec"]))
    assert (t["x"], t["y"]) == pytest.approx((bright[0]["x"], bright[0]["y"]), abs=0.05)
    assert t["inside"] and (tmp_path / "w2" / "image_target.fits").is_file()
    assert [r[1] for r in stand_in.requests] == ["/sesame/-ox/SNV"]
    # offline again: from the cache, no request
    res, state = _run(tmp_path / "w3", src, cache)
    assert res["target_outcomes"][0]["outcome"] == "cached (sesame)"
    assert state["targets"][0]["ra"] == pytest.approx(bright[0]["ra"]) and len(stand_in.requests) == 1


def test_tns_after_sesame_with_bot_headers(tmp_path, field, bright, stand_in):
    src = _frame(tmp_path, field, TARGET=None)
    res, state = _run(tmp_path / "w", src, tmp_path / "cache", catalog=stand_in.catalog(), offline=False,
                      targets=["SN 2026abc"])
    assert res["target_outcomes"] == [{"name": "SN 2026abc", "source": "setting", "outcome": "tns"}]
    assert state["targets"][0]["ra"] == pytest.approx(bright[1]["ra"])
    assert state["targets"][0]["resolved_as"] == "SN2026abc"
    kinds = [(m, p) for m, p, _ in stand_in.requests]
    assert kinds == [("GET", "/sesame/-ox/SNV"), ("POST", "/api/get/search"), ("POST", "/api/get/object")]
    post = stand_in.requests[1][2]
    assert json.loads(post["ua"][len("tns_marker"):]) == {"tns_id": 1234, "type": "bot", "name": "stdd-test"}
    assert post["api_key"] == "secret-key" and json.loads(post["data"]) == {"objname": "2026abc"}


def test_unknown_name_and_unreachable_service_are_outcomes(tmp_path, field, stand_in):
    src = _frame(tmp_path, field)
    res, state = _run(tmp_path / "w1", src, tmp_path / "cache", catalog=stand_in.catalog(), offline=False,
                      targets=["No Such Star"])
    assert res["status"] == "done" and res["target_outcomes"][0]["outcome"] == "not found"
    assert any("'No Such Star' not resolved: not found" in n for n in res["notes"])
    dead = CatalogSettings(sesame_url="http://127.0.0.1:9/sesame", timeout_seconds=2)
    res, state = _run(tmp_path / "w2", src, tmp_path / "cache", catalog=dead, offline=False, targets=["Star Two"])
    assert res["status"] == "done" and res["target_outcomes"][0]["outcome"].startswith("failed: sesame")
    assert state["targets"] == []


def test_object_is_a_target_only_when_it_resolves(tmp_path, field):
    # make_field's OBJECT is a field name: offline, not a target (and no note: OBJECT is often not a target)
    res, state = _run(tmp_path / "w1", _frame(tmp_path, field), tmp_path / "cache")
    assert res["target_outcomes"] == [] and state["targets"] == []
    assert "OBJECT 'SYNTH-FIELD' is not used as a target (offline)" in (tmp_path / "w1" / "inspect.log").read_text()
    src = _frame(tmp_path, field, OBJECT="10:00:02.4 +30:00:36")
    res, state = _run(tmp_path / "w2", src, tmp_path / "cache")
    assert res["target_outcomes"] == [{"name": "10:00:02.4 +30:00:36", "source": "header", "outcome": "coordinates"}]
    assert state["targets"][0]["ra"] == pytest.approx(150.01) and state["targets"][0]["dec"] == pytest.approx(30.01)
    # a configured target wins over the header; header_target=false ignores it
    res, state = _run(tmp_path / "w3", src, tmp_path / "cache", targets=["150.02 30.02"])
    assert [t["source"] for t in state["targets"]] == ["setting"]
    res, state = _run(tmp_path / "w4", src, tmp_path / "cache", header_target=False)
    assert state["targets"] == []


def test_pixel_targets_get_sky_positions(tmp_path, field):
    from astropy.wcs import WCS

    res, state = _run(tmp_path / "w", _frame(tmp_path, field), tmp_path / "cache",
                      targets="x=100.5 y=200\nmine x=300, y=50.25\nother= 20 30 px")
    assert [(t["name"], t["x"], t["y"]) for t in state["targets"]] == [
        ("x=100.5 y=200", 100.5, 200.0), ("mine", 300.0, 50.25), ("other", 20.0, 30.0)]
    w = WCS(fits.getheader(field.frame))
    r, d = w.all_pix2world([300.0], [50.25], 0)
    assert (state["targets"][1]["ra"], state["targets"][1]["dec"]) == pytest.approx((r[0], d[0]))
    assert {o["outcome"] for o in res["target_outcomes"]} == {"pixels"}
    # two numbers that are no sky position are an outcome, not a name sent to Sesame
    res, state = _run(tmp_path / "w2", _frame(tmp_path, field), tmp_path / "cache", targets=["100 200"])
    assert res["target_outcomes"][0]["outcome"].startswith("failed: Dec 200") and state["targets"] == []


def test_several_targets_centroided_and_written_as_votable(tmp_path, field, bright):
    s0, s1 = bright
    targets = [f"off= x={s0['x'] + 1.5:.3f} y={s0['y'] - 1.0:.3f}", f"star1= {s1['ra']:.7f} {s1['dec']:.7f}",
               "x=250 y=250"]
    res, state = _run(tmp_path / "w", _frame(tmp_path, field), tmp_path / "cache", steps=("inspect", "photometry"),
                      catalog=CatalogSettings(source="local", files=[field.catalog]), targets=targets,
                      centroid_targets=True)
    assert res["status"] == "done", res["error"]
    folder = tmp_path / "w"
    ecsv, vot = Table.read(folder / "targets.ecsv"), Table.read(folder / "target.vot")
    assert list(vot["name"]) == list(ecsv["name"]) == ["off", "star1", "x=250 y=250"]
    assert np.allclose(vot["x"], ecsv["x"]) and "target.vot" in res["products"]
    # the offset target moved onto its star; its given position and the offset are recorded
    off = ecsv[0]
    assert off["x"] == pytest.approx(s0["x"], abs=0.3) and off["y"] == pytest.approx(s0["y"], abs=0.3)
    assert off["x_orig"] == pytest.approx(s0["x"] + 1.5, abs=1e-3)
    assert off["centroid_offset_arcsec"] == pytest.approx(np.hypot(1.5, 1.0) * field.truth_data["pixscale_arcsec"],
                                                          abs=0.3)
    assert ecsv[1]["mag"] == pytest.approx(s1["mag"], abs=0.1)
    # later stages read the measured (centroided) positions from photometry.json
    later = json.loads((folder / "photometry.json").read_text())["targets"]
    assert later[0]["x"] == pytest.approx(off["x"]) and later[0]["source"] == "setting"
    # without centroiding the target stays where it was given
    res, _ = _run(tmp_path / "w0", _frame(tmp_path, field), tmp_path / "cache", steps=("inspect", "photometry"),
                  catalog=CatalogSettings(source="local", files=[field.catalog]), targets=targets[:1])
    t0 = Table.read(tmp_path / "w0" / "targets.ecsv")
    assert t0[0]["x"] == pytest.approx(s0["x"] + 1.5, abs=1e-3) and "x_orig" not in t0.colnames


def test_resolver_cache_is_per_name_and_case_insensitive(tmp_path, stand_in):
    cat = stand_in.catalog()
    r1 = names.resolve("Star One", cat, offline=False, cache_dir=tmp_path)
    r2 = names.resolve("star one", cat, offline=True, cache_dir=tmp_path)
    assert r1.ok and r1.outcome == "sesame" and r2.outcome == "cached (sesame)" and (r2.ra, r2.dec) == (r1.ra, r1.dec)
    assert names.resolve("Star Two", cat, offline=True, cache_dir=tmp_path).outcome == "offline"
