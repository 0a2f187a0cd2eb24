"""No localisation, no action: notices whose position is no localisation (error radius 0 or none
where the instrument cannot localise, placeholder and sentinel values) are recorded with the
reason and never acted on. Notices in tests/notices/ are written for these tests in the formats
of real GCN notices; the real samples in ../shared/data keep their verdicts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from alert_env import alert_service

from stdd.alerts import IntakeMessage, parse_notice, screen
from stdd.alerts.localisation import sky_position

NOTICES = Path(__file__).parent / "notices"

#: file -> what the reason must say
NOT_LOCALISED = {
    "agile_mcal_alert.xml": "error radius 0 deg",                  # AGILE MCAL: Error2Radius 0, pointing RA/Dec
    "integral_spiacs.xml": "without an error region",              # SPI-ACS: pointing, no Error2Radius
    "konus_wind.txt": "placeholder_position: ra=0.0, dec=0.0",     # Konus-Wind: 0, 0, error 0
    "maxi_gsc_zero_error.json": "error radius 0 deg",              # MAXI trigger only: ra_dec_error 0
    "fermi_gbm_subthreshold_no_error.json": "without an error region",  # GBM subthreshold: zenith, no error
    "svom_sentinel_position.json": "placeholder_position: ra=-999",  # sentinels
}


@pytest.mark.parametrize("name", sorted(NOT_LOCALISED))
def test_notice_without_localisation_is_recorded_not_acted_on(tmp_path, name):
    raw = (NOTICES / name).read_bytes()
    alert = parse_notice(raw, hint=name)
    assert alert.role == "observation" and not alert.retraction  # nothing else would stop it
    ok, why = screen(alert)
    assert not ok and NOT_LOCALISED[name] in why
    with alert_service(tmp_path, priority=9) as (service, tmp):
        out = service.handle(IntakeMessage(raw, hint=name))
        assert out.state == "parsed" and not out.decision.act and not out.action_ids
        row = service.store.get_alert(out.alert_id)
        assert row["state"] == "ignored" and row["actionable"] == 0 and NOT_LOCALISED[name] in row["ignore_reason"]
        assert service.store.list_actions() == [] and not (tmp / "requests").exists()
        assert service.live_regions() == []


def test_agile_mcal_was_the_case_in_point():
    alert = parse_notice((NOTICES / "agile_mcal_alert.xml").read_bytes())
    assert (alert.mission, alert.notice_type) == ("AGILE", "AGILE_MCAL_ALERT")
    assert alert.ra == pytest.approx(255.7083) and alert.stated_error_deg == 0.0 and alert.region is None
    assert alert.to_dict()["stated_error_deg"] == 0.0  # the position is kept for the record
    # the same notice with a real error circle is a localisation
    localised = parse_notice((NOTICES / "agile_mcal_alert.xml").read_bytes().replace(
        b"<Error2Radius>0.0000</Error2Radius>", b"<Error2Radius>0.5000</Error2Radius>"))
    assert screen(localised) == (True, None) and localised.region is not None


def gsc(**kw) -> bytes:
    base = json.loads((NOTICES / "maxi_gsc_zero_error.json").read_text())
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_general_rules_not_a_list_of_missions(shared_data):
    # the rules hold for any mission and format: change only the error or the position
    assert screen(parse_notice(gsc(ra_dec_error=0.3)))[0]
    assert "error radius -1 deg" in screen(parse_notice(gsc(ra_dec_error=-1)))[1]
    assert "error radius 0 deg" in screen(parse_notice(gsc(ra_dec_error=[0, 0, 0])))[1]
    assert "without an error region" in screen(parse_notice(gsc(ra_dec_error=None)))[1]
    # an RA sentinel is not wrapped onto the sky (9999 % 360 would be a valid 279 deg)
    sentinel = parse_notice(gsc(ra=9999, ra_dec_error=0.5))
    assert sentinel.ra is None and "placeholder_position: ra=9999" in screen(sentinel)[1]
    zero = parse_notice(gsc(ra=0, dec=0, ra_dec_error=0.5))  # GCN's "no position yet", whatever the error
    assert zero.ra is None and not screen(zero)[0]
    raw = (shared_data / "gcn/voevent/swift_bat_grb_pos_532871.xml").read_bytes()
    assert screen(parse_notice(raw))[0]
    no_err = parse_notice(raw.replace(b"<Error2Radius>0.050000</Error2Radius>", b"<Error2Radius>0</Error2Radius>"))
    assert "error radius 0 deg" in screen(no_err)[1]


def test_sky_position_sentinels():
    assert sky_position(10.0, 20.0) == (10.0, 20.0)
    assert sky_position(-10.0, 20.0) == (350.0, 20.0) and sky_position(360.0, 0.5) == (0.0, 0.5)
    for ra, dec in ((0, 0), (-999, -999), (999, 10), (9999, 10), (10, 91), (10, -90.5), (math.nan, 1),
                    (1, math.inf), (None, 1), ("x", 1)):
        assert sky_position(ra, dec) is None, (ra, dec)


def test_exact_positions_stay_actionable(shared_data):
    """A position the notice presents as exact needs no error region: a catalogued source or a named target."""
    json_dir = shared_data / "gcn" / "json"
    for name, says in (("fermi_lat_flare.json", "catalogued source (3FGL)"),
                       ("maxi_gsc_known.json", "known source"),
                       ("boom_alert.json", "named target ZTF25acffkdr")):
        alert = parse_notice((json_dir / name).read_bytes(), hint=name)
        assert alert.region is None and says in alert.exact_position, name
        assert screen(alert) == (True, None), name
    gbm_placeholder = parse_notice((shared_data / "gcn/voevent/fermi_gbm_alert_537755817.xml").read_bytes())
    assert gbm_placeholder.ra is None and screen(gbm_placeholder) == (False, "no usable position")


def test_every_shared_sample_keeps_its_verdict(shared_data):
    """The localisation rule changes none of the real samples' verdicts (they all state their error)."""
    actionable = set()
    for path in sorted((shared_data / "gcn").glob("*/*")):
        if path.suffix not in (".xml", ".json"):
            continue
        try:
            alert = parse_notice(path.read_bytes(), hint=path.name)
        except Exception:
            continue
        if screen(alert)[0]:
            actionable.add(path.name)
    assert {"swift_bat_grb_pos_532871.xml", "fermi_gbm_fin_pos_537755817.xml", "ep_wxt_alert_EP240508.json",
            "icecube_astrotrack_gold_190730.xml", "fermi_lat_flare.json", "boom_alert.json"} <= actionable
    assert not {"fermi_gbm_alert_537755817.xml", "swift_bat_guano_initial.json",
                "fermi_gbm_trigger_alert.json"} & actionable
