"""TOM Toolkit delivery against a real TOM (tomtoolkit's Django site, tests/tom_server.py):
targets found or created, photometry uploaded as a data product TOM reduces, an upload sent
twice kept once (product_id), a TOM that is down retried, bad credentials not."""
from __future__ import annotations

import pytest
import requests

from skyportal_receiver import free_port
from stdd.config.load import settings_from_dict
from stdd.delivery.enqueue import frame_items
from stdd.delivery.sender import send_item
from tom_server import PASSWORD, USER, TomServer, tom_python

pytestmark = pytest.mark.skipif(tom_python() is None, reason="no TOM venv: run scripts/tom_venv.sh")


@pytest.fixture(scope="module")
def tom(tmp_path_factory):
    server = TomServer(tmp_path_factory.mktemp("tom"), free_port()).start()
    yield server
    server.stop()


def settings_for(url, tmp_path, password=PASSWORD):
    pw = tmp_path / "tom.pw"
    pw.write_text(password + "\n")
    return settings_from_dict({"delivery": {"tom": {"url": url, "username": USER, "password_file": str(pw)}}},
                              base=tmp_path)


FRAME = {"id": 5, "sha256": "cd" * 32, "name": "ngc_r_005.fits"}
RESULT = {"filter": "r", "time_mid": "2026-03-01T02:24:00", "mag_limit": 20.4,
          "targets": [{"name": "SN2026tom", "ra": 150.125, "dec": 2.25, "inside": True, "mag": 16.8,
                       "mag_err": 0.02, "mag_limit": 20.2}]}


def api(tom, path, **params):
    r = requests.get(tom.url + path, params=params, auth=(USER, PASSWORD), timeout=10)
    r.raise_for_status()
    return r.json()["results"]


def item(t):
    target, kind, key, payload = t
    return {"id": 1, "target": target, "kind": kind, "key": key, "payload": payload, "attempts": 0}


def test_target_and_photometry_reach_the_tom_once(tom, tmp_path):
    settings = settings_for(tom.url, tmp_path)
    (it,) = frame_items(settings, FRAME, RESULT)
    first = send_item(settings, item(it))
    assert first.ok, first.error
    again = send_item(settings, item(it))  # the answer was lost: sent again
    assert again.ok and again.response["target"] == first.response["target"]
    (target,) = api(tom, "/api/targets/", name="SN2026tom")
    assert target["ra"] == pytest.approx(150.125) and target["dec"] == pytest.approx(2.25)
    datums = api(tom, "/api/reduceddatums/", target__id=target["id"])
    assert len(datums) == 1
    value = datums[0]["value"]
    assert value["brightness"] == pytest.approx(16.8) and value["brightness_error"] == pytest.approx(0.02)
    assert value["bandpass"] == "r" and datums[0]["timestamp"].startswith("2026-03-01T02:24")


def test_a_target_under_another_name_is_found_by_position(tom, tmp_path):
    settings = settings_for(tom.url, tmp_path)
    result = dict(RESULT, time_mid="2026-03-02T02:24:00",
                  targets=[dict(RESULT["targets"][0], name="AT2026alias", ra=150.1252, mag=16.9)])
    (it,) = frame_items(settings, dict(FRAME, sha256="ef" * 32), result)
    out = send_item(settings, item(it))
    assert out.ok, out.error
    assert api(tom, "/api/targets/", name="AT2026alias") == []
    (target,) = api(tom, "/api/targets/", name="SN2026tom")
    assert out.response["target"] == target["id"]
    assert len(api(tom, "/api/reduceddatums/", target__id=target["id"])) == 2


def test_tom_down_is_retryable_and_bad_credentials_are_not(tom, tmp_path):
    (it,) = frame_items(settings_for(tom.url, tmp_path), FRAME, RESULT)
    down = send_item(settings_for(f"http://127.0.0.1:{free_port()}", tmp_path), item(it))
    assert not down.ok and down.retryable
    wrong = send_item(settings_for(tom.url, tmp_path, password="wrong"), item(it))
    assert not wrong.ok and not wrong.retryable and wrong.http_status in (401, 403)


async def test_daemon_frame_done_reaches_the_tom(tom, tmp_path):
    import asyncio

    from pool_stages import write_frame
    from stdd.daemon import Daemon
    from stdd.delivery.sender import DeliveryService
    from stdd.store import Outbox
    from test_daemon_api import Running, make_settings

    (tmp_path / "tom.pw").write_text(PASSWORD)
    s = make_settings(tmp_path, pool={"stage_functions": {"inspect": "pool_stages:behave",
                                                          "photometry": "delivery_stages:measured"}},
                      delivery={"poll_seconds": 0.2,
                                "tom": {"url": tom.url, "username": USER, "password_file": "tom.pw"}})
    async with Running(Daemon(s, services=[DeliveryService()])) as d:
        write_frame(tmp_path / "in" / "t.fits", "t", T_TARGET="AT2026daemon", T_RA=200.5, T_DEC=10.75,
                    T_MAG=18.25, T_MAGERR=0.05, T_TIME="2026-03-03T01:00:00")

        async def sent():
            rows = await d.gate.run(Outbox(d.db).list)
            return rows and rows[0]["state"] == "sent"

        deadline = asyncio.get_running_loop().time() + 60
        while not await sent():
            assert asyncio.get_running_loop().time() < deadline, "not sent within 60 s"
            await asyncio.sleep(0.2)
    (target,) = await asyncio.to_thread(api, tom, "/api/targets/", name="AT2026daemon")
    (datum,) = await asyncio.to_thread(api, tom, "/api/reduceddatums/", target__id=target["id"])
    assert datum["value"]["brightness"] == pytest.approx(18.25) and datum["value"]["bandpass"] == "r"
