"""SkyPortal delivery against a local receiver that checks requests against SkyPortal's API rules
(tests/skyportal_receiver.py): targets' photometry, candidates with cutouts, resolve by position,
the mapping of bands, and what a receiver that is down or refuses a payload leads to."""
from __future__ import annotations

import numpy as np
import pytest

from skyportal_receiver import SkyPortalReceiver, free_port
from stdd.config.load import settings_from_dict
from stdd.delivery.enqueue import frame_items, mjd_of
from stdd.delivery.sender import backoff, send_item


@pytest.fixture
def receiver():
    r = SkyPortalReceiver().start()
    yield r
    r.stop()


def settings_for(url: str, tmp_path, **sp):
    token = tmp_path / "sp.token"
    token.write_text("sp-token\n")
    cfg = {"url": url, "token_file": str(token), "instrument_id": 7, "group_ids": [3], "filter_ids": [11], **sp}
    return settings_from_dict({"delivery": {"skyportal": cfg, "backoff_seconds": 2, "backoff_max_seconds": 10}},
                              base=tmp_path)


FRAME = {"id": 12, "sha256": "ab" * 32, "name": "m101_r_001.fits", "result_dir": None}
RESULT = {
    "filter": "r", "time_mid": "2026-03-01T02:24:00", "mag_limit": 20.4,
    "targets": [
        {"name": "SN2026xyz", "ra": 210.80, "dec": 54.35, "inside": True, "mag": 17.21, "mag_err": 0.03,
         "mag_limit": 20.1},
        {"name": "AT2026faint", "ra": 210.70, "dec": 54.30, "inside": True, "mag": None, "mag_err": None,
         "mag_limit": 19.9},
        {"name": "outside", "ra": 1.0, "dec": 1.0, "inside": False},
    ],
}


def item(target, kind, key, payload, attempts=0):
    return {"id": 1, "target": target, "kind": kind, "key": key, "payload": payload, "attempts": attempts}


def test_target_photometry_is_put_with_a_valid_body_and_a_new_source(receiver, tmp_path):
    settings = settings_for(receiver.url, tmp_path)
    items = frame_items(settings, FRAME, RESULT)
    assert [(t, k) for t, k, _, _ in items] == [("skyportal", "photometry")] * 2  # the one outside: none
    for target, kind, key, payload in items:
        out = send_item(settings, item(target, kind, key, payload))
        assert out.ok, out.error
    assert receiver.rejected == []
    assert set(receiver.sources) == {"SN2026xyz", "AT2026faint"}
    det, lim = receiver.photometry
    assert det["obj_id"] == "SN2026xyz" and det["filter"] == "sdssr" and det["magsys"] == "ab"
    assert det["mag"] == pytest.approx(17.21) and det["magerr"] == pytest.approx(0.03)
    assert det["mjd"] == pytest.approx(61100.1) and det["instrument_id"] == 7 and det["group_ids"] == [3]
    assert lim["mag"] is None and lim["magerr"] is None and lim["limiting_mag"] == pytest.approx(19.9)


def test_a_known_source_is_found_by_position_and_a_resend_adds_nothing(receiver, tmp_path):
    receiver.sources["ZTF26aaaaaaa"] = {"id": "ZTF26aaaaaaa", "ra": 210.8002, "dec": 54.3501}
    settings = settings_for(receiver.url, tmp_path)
    target, kind, key, payload = frame_items(settings, FRAME, RESULT)[0]
    for _ in range(2):  # the second: an attempt whose answer was lost, sent again
        out = send_item(settings, item(target, kind, key, payload))
        assert out.ok and out.response["obj_id"] == "ZTF26aaaaaaa"
    assert len(receiver.photometry) == 1 and "SN2026xyz" not in receiver.sources


def test_candidate_with_cutout(receiver, tmp_path):
    import matplotlib.pyplot as plt

    (tmp_path / "res" / "cutouts").mkdir(parents=True)
    plt.imsave(tmp_path / "res" / "cutouts" / "sub_001.png", np.random.default_rng(1).random((32, 32)))
    settings = settings_for(receiver.url, tmp_path, candidates="all")
    assert frame_items(settings_for(receiver.url, tmp_path), FRAME, dict(RESULT, targets=[], candidates_sub=[
        {"id": "sub_001", "ra": 150.25, "dec": -12.5, "mag": 18.7}])) == []  # default: confirmed ones only
    result = dict(RESULT, targets=[], candidates_sub=[
        {"id": "sub_001", "ra": 150.25, "dec": -12.5, "mag": 18.7, "mag_err": 0.08, "cutout": "cutouts/sub_001.png"}])
    items = frame_items(settings, dict(FRAME, result_dir=str(tmp_path / "res")), result)
    assert [(t, k) for t, k, _, _ in items] == [("skyportal", "candidate")]
    for _ in range(2):  # sent twice (a lost answer): one candidate, one photometry point
        out = send_item(settings, item(*items[0]))
        assert out.ok, out.error
    assert receiver.rejected == []
    (name,) = receiver.candidates
    assert name == "STDDJ100100.00-123000.0" and receiver.candidates[name]["filter_ids"] == [11]
    assert receiver.thumbnails[0]["obj_id"] == name and receiver.thumbnails[0]["bytes"] > 100
    assert len(receiver.photometry) == 1 and receiver.photometry[0]["mag"] == pytest.approx(18.7)


def test_receiver_down_is_retryable_and_refusals_are_not(tmp_path):
    settings = settings_for(f"http://127.0.0.1:{free_port()}", tmp_path)
    target, kind, key, payload = frame_items(settings, FRAME, RESULT)[0]
    out = send_item(settings, item(target, kind, key, payload))
    assert not out.ok and out.retryable and "ConnectionError" in out.error
    assert [backoff(settings, n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]

    r = SkyPortalReceiver(token="another").start()
    try:
        settings = settings_for(r.url, tmp_path)
        out = send_item(settings, item(target, kind, key, payload))
        assert not out.ok and not out.retryable and out.http_status == 401
    finally:
        r.stop()


def test_band_without_bandpass_is_refused_here_not_sent(receiver, tmp_path):
    settings = settings_for(receiver.url, tmp_path)
    target, kind, key, payload = frame_items(settings, FRAME, dict(RESULT, filter="Halpha"))[0]
    out = send_item(settings, item(target, kind, key, payload))
    assert not out.ok and not out.retryable and "Halpha" in out.error
    assert receiver.photometry == []
    mapped = settings_for(receiver.url, tmp_path, filter_map={"Halpha": "sdssr"})
    assert send_item(mapped, item(target, kind, key, payload)).ok


def test_mjd():
    assert mjd_of("2026-03-01T00:00:00") == 61100.0
    assert mjd_of("1858-11-17T12:00:00Z") == 0.5
    assert mjd_of(None) is None and mjd_of("not a time") is None


def test_incomplete_settings_are_config_errors(tmp_path, config_file):
    from stdd.config import ConfigError, load_settings

    path = config_file('[delivery.skyportal]\nurl = "https://fritz.example"\nfilter_ids = [1]\n')
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    assert any("delivery.skyportal" in line and "instrument_id" in line for line in e.value.errors)
    path = config_file('[delivery.skyportal]\nurl = "https://fritz.example"\ninstrument_id = 3\n')
    with pytest.raises(ConfigError, match="filter_ids"):
        load_settings(path)
    path = config_file('[delivery.tom]\nurl = "https://tom.example"\n')
    with pytest.raises(ConfigError, match="username"):
        load_settings(path)
    path = config_file('[delivery.notify.ops]\nurls = ["json://localhost"]\nevents = ["everything"]\n')
    with pytest.raises(ConfigError, match="events"):
        load_settings(path)
    path = config_file('[delivery.skyportal]\nurl = "https://fritz.example"\ninstrument_id = 3\ncandidates = "none"\n'
                       'tokn_file = "x"\n')
    with pytest.raises(ConfigError, match="tokn_file"):
        load_settings(path)


def test_confirmed_candidates_go_to_skyportal_and_the_channels(receiver, tmp_path):
    from stdd.delivery import notify_confirmed_candidates
    from stdd.store import Database, Outbox

    settings = settings_for(receiver.url, tmp_path, candidates="confirmed")
    settings.delivery.notify = {"ops": {"urls": ["json://127.0.0.1:9/"]}}
    cands = [{"name": "c1", "ra": 33.3, "dec": 44.4, "mag": 19.1, "mag_err": 0.1, "filter": "g",
              "time_mid": "2026-03-01T12:00:00"},
             {"name": "c2", "ra": 33.5, "dec": 44.4}]  # no photometry: told, not posted
    with Database(tmp_path / "db.sqlite") as db:
        outbox = Outbox(db)
        with db.write():
            assert notify_confirmed_candidates(outbox, settings, cands) == 2
        assert notify_confirmed_candidates(outbox, settings, cands) == 0  # once only
        rows = {r["target"]: r for r in outbox.list()}
    assert set(rows) == {"skyportal", "notify:ops"} and rows["notify:ops"]["kind"] == "candidates"
    out = send_item(settings, item("skyportal", "candidate", rows["skyportal"]["key"], rows["skyportal"]["payload"]))
    assert out.ok, out.error
    assert receiver.rejected == [] and list(receiver.candidates) == ["STDDJ021312.00+442400.0"]
    assert receiver.photometry[0]["filter"] == "sdssg" and receiver.photometry[0]["mjd"] == pytest.approx(61100.5)


def test_instrument_by_name_and_the_instruments_command(receiver, tmp_path):
    import subprocess
    import sys

    settings = settings_for(receiver.url, tmp_path, instrument_id=None, instrument_name="stdd-cam")
    target, kind, key, payload = frame_items(settings, FRAME, RESULT)[0]
    assert send_item(settings, item(target, kind, key, payload)).ok
    assert receiver.photometry[0]["instrument_id"] == 7
    settings = settings_for(receiver.url, tmp_path, instrument_id=None, instrument_name="no-such-cam")
    out = send_item(settings, item(target, kind, key, payload))
    assert not out.ok and not out.retryable and "no-such-cam" in out.error

    config = tmp_path / "stdd.toml"
    config.write_text(f'[delivery.skyportal]\nurl = "{receiver.url}"\ntoken_file = "sp.token"\n'
                      f'instrument_id = 7\ncandidates = "none"\n')
    run = subprocess.run([sys.executable, "-m", "stdd", "--config", str(config), "delivery", "instruments"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "7  stdd-cam  filters: bessellv, sdssg, sdssr" in run.stdout
