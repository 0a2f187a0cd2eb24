"""AlertService end to end on a real SQLite file: store → parse → dedupe → policy → actions → regions."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from alert_env import alert_service
from alert_skymap import make_gwalert

from stdd.alerts import AlertService, DropFolderIntake, IntakeMessage
from stdd.alerts.latency import swift_voevent
from stdd.config import settings_from_dict
from stdd.store import Database


@pytest.fixture
def env(tmp_path):
    with alert_service(tmp_path, priority=42, forced_photometry_max_radius_deg=0.05) as env:
        yield env


def requests_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


def test_acts_once_and_dedupes(env):
    service, tmp = env
    raw = swift_voevent(1001, ra=30.0, dec=-10.0)
    first = service.handle(IntakeMessage(raw, "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK", 0, 5))
    first.wait(30)
    assert first.state == "parsed" and first.decision.act and first.decision.priority == 42
    assert len(first.action_ids) == 1
    # the same message redelivered (same offset), and the same notice again at a new offset
    again = service.handle(IntakeMessage(raw, "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK", 0, 5))
    dup = service.handle(IntakeMessage(raw, "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK", 0, 6))
    assert again.state == "already-processed" and dup.state == "duplicate" and not dup.action_ids
    assert requests_in(tmp / "requests") == ["ivo_nasa.gsfc.gcn_SWIFT_BAT_GRB_Pos_1001-1.req.observe.json"]
    row = service.store.get_alert(first.alert_id)
    assert row["state"] == "live" and row["actionable"] == 1 and row["parsed"]["mission"] == "Swift"
    assert service.store.message_counts() == {"parsed": 1, "duplicate": 1}
    action = service.store.actions_for_alert(first.alert_id)[0]
    assert action["state"] == "done" and action["purpose"] == "observe"


def test_test_role_is_recorded_without_action(env, shared_data):
    service, tmp = env
    raw = (shared_data / "gcn/voevent/fermi_gbm_subthresh_546126856_roletest.xml").read_bytes()
    out = service.handle(IntakeMessage(raw, "gcn.classic.voevent.FERMI_GBM_SUBTHRESH", 0, 1))
    assert out.state == "parsed" and not out.decision.act and not out.action_ids
    row = service.store.get_alert(out.alert_id)
    assert (row["role"], row["state"], row["actionable"]) == ("test", "ignored", 0)
    assert "test" in row["ignore_reason"]
    assert requests_in(tmp / "requests") == []


def test_garbage_and_control_messages(env, shared_data):
    service, _ = env
    bad = service.handle(IntakeMessage(b"<not xml", "gcn.classic.voevent.X", 0, 1))
    assert bad.state == "error" and "XML" in bad.error
    kill = service.handle(IntakeMessage((shared_data / "gcn/voevent/gcn_kill_socket_packet4.xml").read_bytes(),
                                        "gcn.classic.voevent.X", 0, 2))
    assert kill.state == "control"
    msgs = {m["state"]: m for m in service.store.messages()}
    assert msgs["error"]["error"] and msgs["control"]["alert_id"] == "ivo://nasa.gsfc.gcn/gcn"


def test_lvk_alert_region_and_retraction_cancels(env):
    service, tmp = env
    t0 = time.time()
    prelim = service.handle(IntakeMessage(make_gwalert("S260102cd", ra0=200.0, dec0=-40.0), "igwn.gwalert", 0, 1))
    prelim.wait(30)
    assert prelim.decision.act
    regions = service.live_regions()
    assert [r.alert_id for r in regions] == [prelim.alert_id]
    region = regions[0]
    assert region.kind == "skymap" and region.priority == 42 and region.live_until > t0 + 47 * 3600
    assert region.contains(200.0, -40.0) and not region.contains(20.0, 40.0)
    assert region.overlaps(201.0, -41.0, 0.5) and not region.overlaps(20.0, 40.0, 5.0)
    assert [r.alert_id for r in service.regions_for_footprint({"ra": 201.0, "dec": -41.0, "radius": 0.5})] == \
        [prelim.alert_id]
    assert service.regions_for_footprint([(20, 40), (21, 40), (21, 41), (20, 41)]) == []
    assert service.alerts_at(200.0, -40.0) == [prelim.alert_id]
    from stdd.stages.base import Region
    stage = Region(**region.stage_region())
    assert stage.id == prelim.alert_id and stage.moc and not stage.forced_photometry
    assert service.alerts_at([200.0, 20.0], [-40.0, 40.0]) == [[prelim.alert_id], []]
    retraction = service.handle(IntakeMessage(make_gwalert("S260102cd", alert_type="RETRACTION"), "igwn.gwalert", 0, 2))
    retraction.wait(30)
    assert retraction.decision.kind == "cancel" and len(retraction.action_ids) == 1
    assert service.store.get_alert(prelim.alert_id)["state"] == "retracted"
    assert service.live_regions() == []
    names = requests_in(tmp / "requests")
    assert [n.rsplit(".", 2)[1] for n in names] == ["cancel", "observe"]
    cancel = json.loads((tmp / "requests" / names[0]).read_text())
    assert cancel["purpose"] == "cancel" and cancel["alert"]["id"] == prelim.alert_id
    # a second copy of the retraction cancels nothing twice
    again = service.handle(IntakeMessage(make_gwalert("S260102cd", alert_type="RETRACTION"), "igwn.gwalert", 0, 3))
    assert again.state == "duplicate" and len(requests_in(tmp / "requests")) == 2


def test_live_regions_forced_photometry_supersede_and_expire(env):
    service, _ = env
    bat = service.handle(IntakeMessage(swift_voevent(2002, ra=50.0, dec=5.0), "t", 0, 1))
    xrt_raw = swift_voevent(2002, ra=50.01, dec=5.01, seq=2).replace(b'value="61"', b'value="67"') \
        .replace(b"0.0500", b"0.0020")
    xrt = service.handle(IntakeMessage(xrt_raw, "t", 0, 2))
    regions = service.live_regions()
    assert [r.alert_id for r in regions] == [xrt.alert_id]  # the XRT position superseded BAT's
    assert regions[0].forced_position == (50.01, 5.01)
    assert regions[0].stage_region() == {"id": xrt.alert_id, "ra": 50.01, "dec": 5.01, "radius_deg": 0.002,
                                         "forced_photometry": True, "moc": None}
    assert service.store.get_alert(bat.alert_id)["state"] == "superseded"
    assert service.live_regions(now=time.time() + 49 * 3600) == []
    assert service.expire(now=time.time() + 49 * 3600) == 1


def test_recover_processes_stored_messages(tmp_path):
    settings = settings_from_dict({"alerts": {"rules": [{"require_visible": False, "actions": ["req"]}],
                                              "actions": {"req": {"kind": "request_file", "folder": "req"}}}},
                                  base=tmp_path)
    db = Database(tmp_path / "stdd.sqlite")
    first = AlertService(db, settings)
    # stored (as the Kafka intake does before committing) but the daemon stopped before processing
    mid, created = first.store_message(IntakeMessage(swift_voevent(3003), "t", 0, 9))
    assert created
    first.close()
    second = AlertService(db, settings)
    outcomes = second.recover()
    assert [o.state for o in outcomes] == ["parsed"]
    outcomes[0].wait(30)
    assert len(list((tmp_path / "req").glob("*.json"))) == 1
    assert second.recover() == []
    second.close()
    db.close()


def test_drop_folder(env, shared_data):
    service, tmp = env
    drop = DropFolderIntake(service.settings, service.handle)
    drop.start()
    try:
        folder = tmp / "drop"
        (folder / "note.part").write_bytes(b"partial")
        src = shared_data / "gcn/json/classic_json_swift_bat_grb_pos_ack.json"
        (folder / "SWIFT_BAT_GRB_POS_ACK_1.json").write_bytes(src.read_bytes())
        (folder / "junk.txt").write_text("nothing here")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (folder / "failed" / "junk.txt").exists():
            time.sleep(0.05)
        assert (folder / "done" / "SWIFT_BAT_GRB_POS_ACK_1.json").exists()
        assert (folder / "failed" / "junk.txt").exists() and (folder / "failed" / "junk.txt.error").read_text()
        assert (folder / "note.part").exists()
        rows = service.store.list_alerts()
        assert len(rows) == 1 and rows[0]["mission"] == "Swift" and rows[0]["notice_type"] == "SWIFT_BAT_GRB_POS_ACK"
    finally:
        drop.stop()


def test_a_swift_trigger_reissued_def_not_a_grb_withdraws_the_first(env):
    """Swift withdraws a trigger by re-issuing it with Def_NOT_a_GRB set: the first notice's
    region stops being live and its observation request gets a cancel."""
    service, tmp = env
    topic = "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"
    first = service.handle(IntakeMessage(swift_voevent(3003, ra=40.0, dec=-5.0), topic, 0, 1))
    first.wait(30)
    assert first.decision.act and [r.alert_id for r in service.live_regions()] == [first.alert_id]
    withdrawn = swift_voevent(3003, ra=40.0, dec=-5.0, seq=2).replace(
        b'<Param name="Test_Submission" value="false"/>',
        b'<Param name="Test_Submission" value="false"/><Param name="Def_NOT_a_GRB" value="true"/>')
    second = service.handle(IntakeMessage(withdrawn, topic, 0, 2))
    second.wait(30)
    assert second.decision.kind == "cancel" and len(second.action_ids) == 1
    assert service.store.get_alert(first.alert_id)["state"] == "retracted"
    assert service.live_regions() == []
    assert [n.rsplit(".", 2)[1] for n in requests_in(tmp / "requests")] == ["cancel", "observe"]
