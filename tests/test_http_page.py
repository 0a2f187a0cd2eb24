"""The HTML status page in headless Chromium, and the alert routes with the real alert service:
a real Swift notice posted over HTTP, the frames covering its region and the candidates inside."""
from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import quote

import aiohttp
import pytest

from http_env import AlertServiceBeside, chromium_dom, make_settings, running_daemon, wait_for, write_frame

SWIFT = "gcn/voevent/swift_bat_grb_pos_532871.xml"
SWIFT_ID = "ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_532871-729"
SWIFT_RA, SWIFT_DEC = 74.7412, -9.3137


class Rows(HTMLParser):
    """Rows of the page's tables, by class, with their cells' text and images."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class") in ("frame", "alert"):
            self._row = {"class": a["class"], "id": a.get("data-id"), "cells": [], "imgs": []}
        elif self._row is not None and tag == "td":
            self._cell = ""
        elif self._row is not None and tag == "img":
            self._row["imgs"].append(a)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, stages={"inspect": "http_stages:preview"}, steps=["inspect"],
                         extra={"alerts": {"enabled": True, "rules": [{"require_visible": False}]}})


async def test_status_page_in_chromium_and_alert_coverage(settings, tmp_path, shared_data):
    notice = (shared_data / SWIFT).read_bytes()
    async with running_daemon(settings, services=(AlertServiceBeside(),)) as (daemon, svc):
        auth = {"Authorization": f"Bearer {svc.token}"}
        async with aiohttp.ClientSession() as s:
            ids = []
            for i, (ra, dec) in enumerate([(SWIFT_RA, SWIFT_DEC), (200.0, 45.0)]):
                path = write_frame(tmp_path / "incoming" / f"night_{i}.fits", float(i), size=32,
                                   T_ID=f"p{i}", T_RA=ra, T_DEC=dec, T_ZP=24.123 + i)
                async with s.post(svc.url + "/frames", json={"path": str(path)}, headers=auth) as r:
                    assert r.status == 201
                    ids.append((await r.json())["frame"]["id"])

            async def all_done():
                async with s.get(svc.url + "/frames", params={"state": "done"}) as r:
                    return (await r.json())["total"] == 2
            await wait_for(all_done, 30, "both frames done")

            # a real notice, posted like one from Kafka
            async with s.post(svc.url + "/alerts", data=notice, headers={**auth, "Content-Type": "application/xml"},
                              params={"topic": "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"}) as r:
                body = await r.json()
                assert r.status == 201, body
                assert body["created"] is True and body["alert_id"] == SWIFT_ID and body["alert"]["state"] == "live"
            async with s.post(svc.url + "/alerts", data=notice, headers=auth) as r:  # the same notice again
                again = await r.json()
                assert r.status == 200 and again["created"] is False and again["state"] == "duplicate"
            async with s.post(svc.url + "/alerts", data=b"<not a notice/>", headers=auth) as r:
                assert r.status == 400 and "notice" in (await r.json())["error"]
            async with s.post(svc.url + "/alerts", data=b"{broken", headers={**auth, "Content-Type":
                                                                              "application/json"}) as r:
                assert r.status == 400

            async with s.get(svc.url + "/alerts", params={"live": "true"}) as r:
                listed = await r.json()
                assert [a["id"] for a in listed["alerts"]] == [SWIFT_ID] and listed["total"] == 1
            async with s.get(svc.url + "/alerts/" + quote(SWIFT_ID, safe="")) as r:
                detail = await r.json()
                assert r.status == 200, detail
            assert detail["region"]["kind"] == "circle" and abs(detail["region"]["radius"] - 0.05) < 1e-9
            assert [f["id"] for f in detail["frames"]] == [ids[0]]  # the frame at the GRB, not the other
            assert len(detail["candidates"]) == 1 and detail["candidates"][0]["frame_id"] == ids[0]
            assert detail["candidates"][0]["mag"] == 18.2
            assert isinstance(detail["actions"], list)

            # alerts are enabled but no GCN stream runs: health says so, with 503
            async with s.get(svc.url + "/health") as r:
                health = await r.json()
                assert r.status == 503 and health["ok"] is False
                assert health["checks"]["alert_stream"]["ok"] is False and health["checks"]["database"]["ok"]

            dom = await chromium_dom(svc.url + "/", tmp_path / "chromium-profile")

            # the thumbnail the page links is a real PNG served from the frame's folder
            parser = Rows()
            parser.feed(dom)
            frames = [r for r in parser.rows if r["class"] == "frame"]
            assert sorted(int(r["id"]) for r in frames) == sorted(ids)
            for row in frames:
                src = row["imgs"][0]["src"]
                assert src == f"/frames/{row['id']}/thumbnail.png"
                assert row["imgs"][0].get("data-loaded") == "1", "chromium did not load the thumbnail"
                async with s.get(svc.url + src) as r:
                    thumb = await r.read()
                async with s.get(svc.url + f"/frames/{row['id']}/files/plots/inspect_preview.png") as r:
                    assert r.status == 200 and thumb == await r.read()  # the stage's own preview
                assert thumb.startswith(b"\x89PNG")
    by_id = {int(r["id"]): r["cells"] for r in frames}
    first = by_id[ids[0]]
    assert "night_0.fits" in first and "done" in first
    assert "24.123" in first and "2.34" in first and "19.87" in first and "2" in first  # zp, FWHM, limit, cands
    assert "25.123" in by_id[ids[1]]
    alerts = [r for r in parser.rows if r["class"] == "alert"]
    assert [a["id"] for a in alerts] == [SWIFT_ID]
    assert "Swift" in " ".join(alerts[0]["cells"])
    assert 'id="workers"' in dom and 'id="queue"' in dom
