"""Parsing GCN notices: every shared sample, plus the formats and units the samples do not cover."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stdd.alerts import NoticeError, parse_notice, scale_containment, screen

K68 = math.sqrt(math.log(0.1) / math.log(0.32))  # 68 % -> 90 % radius of a 2-D Gaussian, 1.4217

# file, mission, notice_type, role, retraction, ra, dec, 90 % radius (deg) or None, has_skymap, actionable
SAMPLES = [
    ("voevent/gcn_kill_socket_packet4.xml", "GCN", "KILL_SOCKET", "control", False, None, None, None, False, False),
    ("voevent/swift_bat_grb_pos_532871.xml", "Swift", "SWIFT_BAT_GRB_POS_ACK", "observation", False,
     74.7412, -9.3137, 0.05, False, True),
    ("voevent/swift_bat_grb_pos_1125809.xml", "Swift", "SWIFT_BAT_GRB_POS_ACK", "observation", False,
     64.7373, 13.3517, 0.05, False, True),
    ("voevent/swift_xrt_pos_1125809.xml", "Swift", "SWIFT_XRT_POSITION", "observation", False,
     64.7149, 13.35, 0.0013, False, True),
    ("voevent/fermi_gbm_alert_537755817.xml", "Fermi", "FERMI_GBM_ALERT", "observation", False,
     None, None, None, False, False),
    ("voevent/fermi_gbm_flt_pos_537755817.xml", "Fermi", "FERMI_GBM_FLT_POS", "observation", False,
     216.3833, 18.7, 19.8333 * K68, False, True),
    ("voevent/fermi_gbm_gnd_pos_537755817.xml", "Fermi", "FERMI_GBM_GND_POS", "observation", False,
     214.74, 28.14, 11.19 * K68, False, True),
    ("voevent/fermi_gbm_fin_pos_537755817.xml", "Fermi", "FERMI_GBM_FIN_POS", "observation", False,
     212.77, 27.05, 5.2 * K68, False, True),
    ("voevent/fermi_gbm_subthresh_546126856_roletest.xml", "Fermi", "FERMI_GBM_SUBTHRESH", "test", False,
     262.97, 19.7399, 22.1299 * K68, False, False),
    ("voevent/fermi_gbm_subthresh_578679123.xml", "Fermi", "FERMI_GBM_SUBTHRESH", "observation", False,
     143.53, 38.0799, 10.49 * K68, False, True),
    ("voevent/integral_wakeup_trig0.xml", "INTEGRAL", "INTEGRAL_WAKEUP", "test", False,
     1.2343, 2.3455, 0.0169, False, False),
    ("voevent/amon_icecube_hese_151115.xml", "IceCube", "AMON_ICECUBE_HESE", "observation", False,
     144.8915, -27.9826, 1.0, False, True),
    ("voevent/icecube_astrotrack_gold_190730.xml", "IceCube", "ICECUBE_ASTROTRACK_GOLD", "observation", False,
     225.7899, 10.47, 1.185, False, True),
    ("voevent/icecube_astrotrack_bronze_220822.xml", "IceCube", "ICECUBE_ASTROTRACK_BRONZE", "observation", False,
     273.4834, 22.1648, 1.2755, False, True),
    ("voevent/lvc_initial_G298048_GW170817.xml", "LVK", "LVC_INITIAL", "observation", False,
     None, None, None, False, False),
    ("voevent/lvc_initial_S190425z.xml", "LVK", "LVC_INITIAL", "observation", False, None, None, None, False, False),
    ("voevent/lvc_update_S190814bv.xml", "LVK", "LVC_UPDATE", "observation", False, None, None, None, False, False),
    ("voevent/lvc_earlywarning_MS181101ab.xml", "LVK", "LVC_EARLY_WARNING", "mock", False,
     None, None, None, False, False),
    ("voevent/lvc_preliminary_MS181101ab.xml", "LVK", "LVC_PRELIMINARY", "mock", False,
     None, None, None, False, False),
    ("voevent/lvc_initial_MS181101ab.xml", "LVK", "LVC_INITIAL", "mock", False, None, None, None, False, False),
    ("voevent/lvc_update_MS181101ab_extcoinc.xml", "LVK", "LVC_UPDATE", "mock", False,
     None, None, None, False, False),
    ("json/swift_bat_guano_initial.json", "Swift", "swift.bat.guano", "observation", False,
     None, None, None, False, False),
    ("json/swift_bat_guano_loc_arcmin.json", "Swift", "swift.bat.guano", "observation", False,
     336.26, 25.139, 0.5, False, True),
    ("json/swift_bat_guano_loc_map.json", "Swift", "swift.bat.guano", "observation", False,
     None, None, None, False, False),
    ("json/ep_wxt_alert_schema_example.json", "Einstein Probe", "einstein_probe.wxt.alert", "observation", False,
     120.0, 40.0, 0.02, False, True),
    ("json/ep_wxt_alert_EP240508.json", "Einstein Probe", "einstein_probe.wxt.alert", "observation", False,
     229.837999999, -29.746999999, 0.05089517, False, True),
    ("json/fermi_gbm_trigger_alert.json", "Fermi", "fermi.gbm.trigger:INITIAL_ALERT", "observation", False,
     None, None, None, False, False),
    # most likely class BELOW_HORIZON: not a GRB, never acted on
    ("json/fermi_gbm_trigger_flight1.json", "Fermi", "fermi.gbm.trigger:FLIGHT_POSITION", "observation", False,
     136.917, -78.117, 8.32 * K68, False, False),
    ("json/fermi_gbm_trigger_final.json", "Fermi", "fermi.gbm.trigger:FINAL_POSITION", "observation", False,
     29.24, -63.62, 1.0 * K68, False, True),
    ("json/fermi_lat_flare.json", "Fermi", "fermi.lat.flare", "observation", False,
     215.62657, 32.38623, None, False, True),
    ("json/svom_eclairs_trigger_wakeup.json", "SVOM", "svom.trigger", "test", False,
     143.2478, -68.0289, 0.1, False, False),
    ("json/svom_grm_trigger.json", "SVOM", "svom.trigger", "test", False, 143.2478, -68.0289, 0.1, False, False),
    ("json/icecube_gold_bronze_track_alert.json", "IceCube", "icecube.single_neutrino_alerts", "observation", False,
     345.82, 9.01, 0.5, False, True),
    ("json/km3net_alert.json", "KM3NeT", "km3net.alert", "observation", False, 10.82, 20.01, 0.9, False, True),
    ("json/maxi_gsc_known.json", "MAXI", "maxi.gsc.known", "observation", False, 285.6, -9.2, None, False, True),
    # ellipse [0.22, 0.19, 153] at 90 %: circle of the same area
    ("json/maxi_gsc_unknown_ellipse.json", "MAXI", "maxi.gsc.unknown", "observation", False,
     346.56, 18.61, math.sqrt(0.22 * 0.19), False, True),
    ("json/maxi_gsc_unknown_retraction.json", "MAXI", "maxi.gsc.unknown", "observation", True,
     None, None, None, False, False),
    ("json/chime_frb_detection.json", "CHIME", "chime.frb", "observation", False,
     346.77850859547, 12.632485229956252, math.sqrt(0.503806986334273 * 0.598921231135782), False, True),
    ("json/chime_frb_retraction.json", "CHIME", "chime.frb", "observation", True, None, None, None, False, False),
    ("json/superk_sn_alert_real.json", "Super-Kamiokande", "superk.sn_alert", "observation", False,
     270.82, 31.46, 0.91 * K68, False, True),
    ("json/burstcube_alert.json", "BurstCube", "burstcube.alert", "observation", False,
     232.0, -53.1, 10.0, False, True),
    ("json/boom_alert.json", "BOOM", "boom.alert", "observation", False, 150.175649, 15.2832185, None, False, True),
    ("json/heasarc_archive_alert.json", "HEASARC", "heasarc.archive_alert", "test", False,
     None, None, None, False, False),
    ("json/igwn_gwalert_MS181101ab_preliminary.json", "LVK", "PRELIMINARY", "mock", False,
     None, None, "skymap", True, False),
    ("json/igwn_gwalert_MS181101ab_retraction.json", "LVK", "RETRACTION", "mock", True,
     None, None, None, False, False),
    ("json/igwn_gwalert_MS181101ab_ext_update_EXCERPT.json", "LVK", "UPDATE", "mock", False,
     None, None, None, False, False),
    ("json/classic_json_swift_bat_grb_pos_ack.json", "Swift", "SWIFT_BAT_GRB_POS_ACK", "observation", False,
     336.66450000000003, 8.5135, 0.05, False, True),
]


def test_every_sample_is_in_the_table(shared_data):
    files = {str(p.relative_to(shared_data / "gcn")) for p in (shared_data / "gcn").glob("*/*") if p.is_file()}
    assert files == {row[0] for row in SAMPLES}


@pytest.mark.parametrize("row", SAMPLES, ids=[r[0].split("/")[1] for r in SAMPLES])
def test_sample(shared_data, row):
    file, mission, ntype, role, retraction, ra, dec, radius, has_skymap, actionable = row
    path = shared_data / "gcn" / file
    alert = parse_notice(path.read_bytes(), hint=path.name)
    assert (alert.mission, alert.notice_type, alert.role, alert.retraction) == (mission, ntype, role, retraction)
    assert alert.has_skymap is has_skymap
    if ra is None:
        assert alert.ra is None and alert.dec is None
    else:
        assert alert.ra == pytest.approx(ra, abs=1e-6) and alert.dec == pytest.approx(dec, abs=1e-6)
    if radius is None:
        assert alert.error_radius_deg is None
    elif radius == "skymap":
        # MS181101ab: BAYESTAR map, 90 % area ~31 deg2 -> cap radius ~3.1 deg
        assert alert.skymap.area_deg2(0.9) == pytest.approx(31.0, rel=0.05)
        assert alert.error_radius_deg == pytest.approx(math.degrees(math.acos(1 - alert.skymap.area_deg2() /
                                                                                  (2 * math.pi * (180 / math.pi) ** 2))))
    else:
        assert alert.error_radius_deg == pytest.approx(radius, rel=1e-6)
    ok, reason = screen(alert)
    assert ok is actionable, reason
    assert ok or reason


def test_sample_ids_are_unique_and_stable(shared_data):
    ids = {}
    for file, *_ in SAMPLES:
        raw = (shared_data / "gcn" / file).read_bytes()
        a1, a2 = parse_notice(raw), parse_notice(raw, topic="gcn.notices.something")
        assert a1.id == a2.id or a1.format == "json" and a1.id.split("#")[1] == a2.id.split("#")[1]
        ids.setdefault(a1.id, file)
    assert len(ids) == len(SAMPLES)


def test_retractions_name_the_event(shared_data):
    gw = parse_notice((shared_data / "gcn/json/igwn_gwalert_MS181101ab_retraction.json").read_bytes())
    assert gw.retracts == "MS181101ab" and gw.event_id == "MS181101ab"
    maxi = parse_notice((shared_data / "gcn/json/maxi_gsc_unknown_retraction.json").read_bytes())
    assert maxi.retracts == "9995289617"
    assert screen(maxi) == (False, "retraction of 9995289617")


def test_gbm_classification_and_skymap_urls(shared_data):
    flt = parse_notice((shared_data / "gcn/voevent/fermi_gbm_flt_pos_537755817.xml").read_bytes())
    assert flt.most_likely_class == "GRB" and flt.not_astrophysical is None
    gnd = parse_notice((shared_data / "gcn/voevent/fermi_gbm_gnd_pos_537755817.xml").read_bytes())
    assert gnd.skymap_url.endswith("gbm_gnd_loc_map_537755817.fits") and not gnd.has_skymap
    lvc = parse_notice((shared_data / "gcn/voevent/lvc_initial_S190425z.xml").read_bytes())
    assert lvc.skymap_url and "skymap given only as a URL" in screen(lvc)[1]
    placeholder = parse_notice((shared_data / "gcn/json/swift_bat_guano_loc_map.json").read_bytes())
    assert placeholder.skymap_error and "not a FITS file" in placeholder.skymap_error


def test_cli_parse_json(shared_data):
    path = shared_data / "gcn/voevent/swift_bat_grb_pos_532871.xml"
    out = subprocess.run([sys.executable, "-m", "stdd", "alert", "parse", str(path), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("id", "mission", "notice_type", "role", "retraction", "time", "ra", "dec", "error_radius_deg",
                "has_skymap", "actionable", "ignore_reason"):
        assert key in d
    assert d["id"] == "ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_532871-729"
    assert d["time"] == "2012-09-07T00:24:23.08Z"
    assert d["actionable"] is True and d["ignore_reason"] is None


def test_cli_parse_garbage_is_a_clear_error(tmp_path):
    bad = tmp_path / "junk.xml"
    bad.write_text("<VOEvent><What>")
    out = subprocess.run([sys.executable, "-m", "stdd", "alert", "parse", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert "not a readable notice" in out.stderr and "Traceback" not in out.stderr


# -- formats and units beyond the samples ---------------------------------------------------
def voevent(error="0.05", unit="deg", role="observation", ptype=61, extra_params="", c1="10.0", c2="20.0"):
    return f"""<?xml version="1.0"?>
<voe:VOEvent xmlns:voe="http://www.ivoa.net/xml/VOEvent/v2.0" version="2.0" role="{role}"
 ivorn="ivo://nasa.gsfc.gcn/TEST#X_{ptype}_{error}_{unit}">
 <What><Param name="Packet_Type" value="{ptype}"/><Param name="TrigID" value="42"/>{extra_params}</What>
 <WhereWhen><ObsDataLocation><ObservationLocation><AstroCoordSystem id="UTC-FK5-GEO"/>
 <AstroCoords coord_system_id="UTC-FK5-GEO"><Time unit="s"><TimeInstant><ISOTime>2025-03-04T05:06:07.89</ISOTime>
 </TimeInstant></Time><Position2D unit="{unit}"><Name1>RA</Name1><Name2>Dec</Name2>
 <Value2><C1>{c1}</C1><C2>{c2}</C2></Value2><Error2Radius>{error}</Error2Radius></Position2D></AstroCoords>
 </ObservationLocation></ObsDataLocation></WhereWhen></voe:VOEvent>""".encode()


def test_voevent_units_arcmin_arcsec():
    a = parse_notice(voevent(error="3.0", unit="arcmin", c1="600", c2="1200"))
    assert (a.ra, a.dec) == pytest.approx((10.0, 20.0)) and a.error_radius_deg == pytest.approx(0.05)
    b = parse_notice(voevent(error="5.0", unit="arcsec", c1="36000", c2="72000"))
    assert b.error_radius_deg == pytest.approx(5 / 3600)


def test_voevent_1_1_namespace_and_all_sky():
    raw = voevent(error="360").replace(b"VOEvent/v2.0", b"VOEvent/v1.1").replace(b'version="2.0"', b'version="1.1"')
    a = parse_notice(raw)
    assert a.mission == "Swift" and a.all_sky
    assert screen(a)[1].startswith("all-sky")


def test_voevent_systematic_added_in_quadrature():
    a = parse_notice(voevent(error="3.0", extra_params='<Param name="Sys_Err" value="4.0" unit="deg"/>'))
    assert a.region.radius == pytest.approx(5.0) and a.region.systematic_included


def test_voevent_gbm_not_a_grb_and_tgf():
    tgf = parse_notice(voevent(ptype=111, error="10", extra_params='<Param name="Most_Likely_Index" value="19"/>'))
    assert tgf.most_likely_class == "TGF" and not screen(tgf)[0]
    assert tgf.error_radius_deg == pytest.approx(10 * K68)
    flagged = parse_notice(voevent(extra_params='<Group name="Solution_Status"><Param name="Def_NOT_a_GRB" '
                                                'value="true"/></Group>'))
    assert not screen(flagged)[0]
    # the flag withdraws the trigger: earlier notices of the same event are retracted
    assert flagged.retraction and flagged.retracts == flagged.event_id == "42"
    assert "def_not_a_grb" in flagged.flags


def test_voevent_test_flags_and_types():
    assert parse_notice(voevent(role="test")).role == "test"
    assert parse_notice(voevent(ptype=82)).role == "test"  # SWIFT_BAT_GRB_POS_TEST
    assert parse_notice(voevent(role="utility")).role == "control"
    assert parse_notice(voevent(), topic="gcn.classic.voevent.FERMI_GBM_POS_TEST").role == "test"


def test_voevent_placeholder_position_is_no_position():
    a = parse_notice(voevent(error="0", c1="0", c2="0"))
    assert a.ra is None and "no_localization_yet" in a.flags and screen(a) == (False, "no usable position")


def test_containment_conversions():
    assert scale_containment(1.0, 1 - math.exp(-0.5)) == pytest.approx(2.146, abs=1e-3)  # 1 sigma (2-D)
    assert scale_containment(1.0, 0.68) == pytest.approx(K68)
    assert scale_containment(2.0, 0.9) == pytest.approx(2.0)
    assert scale_containment(1.0, 0.5) == pytest.approx(math.sqrt(math.log(10) / math.log(2)))


def notice_json(**kw):
    base = {"$schema": "https://gcn.nasa.gov/schema/main/gcn/notices/maxi/gsc.unknown.schema.json",
            "mission": "MAXI", "instrument": "GSC", "alert_type": "update", "alert_tense": "current",
            "trigger_time": "2023-02-20T08:56:01Z", "id": "9995289617", "record_number": 1, "ra": 346.56,
            "dec": 18.61}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_json_error_forms():
    circle = parse_notice(notice_json(ra_dec_error=1.5))
    assert circle.region.kind == "circle" and circle.error_radius_deg == pytest.approx(1.5)
    sigma = parse_notice(notice_json(ra_dec_error=1.0, containment_probability=1 - math.exp(-0.5)))
    assert sigma.error_radius_deg == pytest.approx(2.146, abs=1e-3)
    ell = parse_notice(notice_json(ra_dec_error=[0.4, 0.1]))
    assert ell.region.kind == "ellipse" and ell.error_radius_deg == pytest.approx(0.2)
    assert ell.region.contains(346.56, 18.61 + 0.39) and not ell.region.contains(346.56 + 0.2, 18.61)
    rect = parse_notice(notice_json(rectangular_error_corners=[[345.72, 19.547], [345.464, 19.29],
                                                                [347.309, 17.634], [347.566, 17.889]]))
    assert rect.region.kind == "polygon" and rect.region.contains(346.56, 18.61)
    # a 2.41 x 0.353 deg box (0.850 deg2) at 90 %: the circle of the same area
    assert rect.error_radius_deg == pytest.approx(math.sqrt(2.409 * 0.3527 / math.pi), rel=0.01)
    assert "known_source" not in rect.flags
    noerr = parse_notice(notice_json())  # a position without an error: no localisation, no action
    assert noerr.error_radius_deg is None and noerr.stated_error_deg is None
    ok, why = screen(noerr)
    assert not ok and "without an error region" in why
    sys_err = parse_notice(notice_json(ra_dec_error=3.0, systematic_error=4.0))
    assert sys_err.error_radius_deg == pytest.approx(5.0)


def test_json_nested_positions():
    lvk_nu = {"$schema": "https://gcn.nasa.gov/schema/main/gcn/notices/icecube/lvk_nu_track_search.schema.json",
              "ref_ID": "S230914ak", "trigger_time": "2023-09-14T11:14:01Z",
              "coincident_events": [
                  {"localization": {"ra": 17.48, "dec": 16.15, "ra_dec_error": 0.5, "containment_probability": 0.9}},
                  {"localization": {"ra": 13.82, "dec": 18.66, "ra_dec_error": 0.7}}],
              "most_probable_direction": {"ra": 17.49, "dec": 16.18}}
    a = parse_notice(json.dumps(lvk_nu).encode())
    assert (a.mission, a.event_id, a.ra, a.dec, a.error_radius_deg) == ("IceCube", "S230914ak", 17.49, 16.18, 0.5)


def test_json_roles():
    assert parse_notice(notice_json(alert_tense="test")).role == "test"
    assert parse_notice(notice_json(alert_tense="injection")).role == "mock"
    assert parse_notice(notice_json(alert_tense="archival")).role == "test"
    burstcube_test = notice_json(**{"$schema": "https://gcn.nasa.gov/schema/main/gcn/notices/burstcube/test.schema.json",
                                    "mission": "BurstCube"})
    assert parse_notice(burstcube_test).role == "test"


def test_json_classic_conversion_needs_topic_or_name():
    raw = b'{"trigger_time": "2024-05-11T18:06:53.220Z", "ra": 336.66, "dec": 8.51, "ra_dec_error": 0.05}'
    by_topic = parse_notice(raw, topic="gcn.classic.json.SWIFT_XRT_POSITION")
    assert (by_topic.mission, by_topic.instrument, by_topic.notice_type) == ("Swift", "XRT", "SWIFT_XRT_POSITION")
    by_name = parse_notice(raw, hint="FERMI_GBM_FLT_POS-2024.json")
    assert by_name.notice_type == "FERMI_GBM_FLT_POS" and by_name.error_radius_deg == pytest.approx(0.05)


TEXT_NOTICE = """TITLE:            GCN/SWIFT NOTICE
NOTICE_DATE:      Fri 07 Sep 12 00:24:36 UT
NOTICE_TYPE:      Swift-BAT GRB Position
TRIGGER_NUM:      532871,   Seg_Num: 0
GRB_RA:            74.7412d {{+04h 58m 57.9s}} (J2000),
                   74.9097d {{+04h 59m 38.3s}} (current),
GRB_DEC:           -9.3137d {{-09d 18' 49.3"}} (J2000),
GRB_ERROR:         {error}
GRB_DATE:          16177 TJD;   251 DOY;   12/09/07
GRB_TIME:          1463.08 SOD {{00:24:23.08}} UT
COMMENTS:          SWIFT-BAT GRB Coordinates.
"""


def test_text_notice_arcmin():
    a = parse_notice(TEXT_NOTICE.format(error="3.00 [arcmin radius, statistical only]").encode(),
                     topic="gcn.classic.text.SWIFT_BAT_GRB_POS_ACK")
    assert (a.mission, a.notice_type, a.event_id) == ("Swift", "SWIFT_BAT_GRB_POS_ACK", "532871")
    assert (a.ra, a.dec) == pytest.approx((74.7412, -9.3137))
    assert a.error_radius_deg == pytest.approx(0.05)
    assert a.time == "2012-09-07T00:24:23.08Z"
    assert a.region.systematic_included is False


def test_text_notice_stated_containment_and_sigma():
    a = parse_notice(TEXT_NOTICE.format(error="0.4968 [deg radius, stat-only, 50% containment]").encode())
    assert a.error_radius_deg == pytest.approx(scale_containment(0.4968, 0.5))
    b = parse_notice(TEXT_NOTICE.format(error="1.0 [deg radius, 1-sigma]").encode())
    assert b.error_radius_deg == pytest.approx(2.146, abs=1e-3)
    c = parse_notice(TEXT_NOTICE.format(error="30 [arcsec radius, stat+sys, 90% containment]").encode())
    assert c.error_radius_deg == pytest.approx(30 / 3600)


def test_control_messages():
    hb = parse_notice(b'{"alert_datetime": "2026-01-01T00:00:01Z"}', topic="gcn.heartbeat")
    assert hb.role == "control" and not screen(hb)[0]
    packet = struct.pack(">i", 3) + bytes(156)
    assert parse_notice(packet).notice_type == "IM_ALIVE"
    with pytest.raises(NoticeError, match="type 61 .*not a valid event time"):  # an all-zero science packet
        parse_notice(struct.pack(">i", 61) + bytes(156))


@pytest.mark.parametrize("raw", [b"", b"   ", b"hello world", b"<html></html>", b"<VOEvent", b"{}", b"[1, 2]",
                                 b'{"foo": 1}', b"\x00\x01\x02", b'{"superevent_id": 5}', b"<?xml version='1.0'?>"])
def test_garbage_raises_notice_error(raw):
    with pytest.raises(NoticeError):
        parse_notice(raw)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode),
                 st.dictionaries(st.sampled_from(["ra", "dec", "ra_dec_error", "id", "mission", "alert_type",
                                                  "containment_probability", "rectangular_error_corners",
                                                  "healpix_file", "alert_tense", "superevent_id", "event"]),
                                 st.one_of(st.none(), st.floats(allow_nan=True), st.integers(), st.text(max_size=8),
                                           st.lists(st.floats(allow_nan=False, width=32), max_size=4)),
                                 max_size=8).map(lambda d: json.dumps(d).encode())))
def test_anything_parses_or_raises_notice_error(raw):
    try:
        alert = parse_notice(raw)
    except NoticeError:
        return
    d = alert.to_dict()
    json.dumps(d)  # always serialisable
    screen(alert)
