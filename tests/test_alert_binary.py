"""Classic 160-byte binary GCN notices: real packets built word by word from documented field values.

Each packet is 40 big-endian signed 4-byte words (GCN socket packet definition); the values put in
them come from real events (the VOEvent/JSON samples in ../shared/data/gcn) wherever a sample holds
the same event, so the binary reader is checked against the VOEvent/JSON readers on the same facts.
"""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time

import pytest
from alert_env import alert_service
from astropy.time import Time
from hypothesis import given, settings
from hypothesis import strategies as st

from stdd.alerts import DropFolderIntake, IntakeMessage, NoticeError, parse_notice, screen
from stdd.alerts.binary_notices import DECODERS, parse_binary_notice

K68 = math.sqrt(math.log(0.1) / math.log(0.32))  # 68 % -> 90 % radius of a 2-D Gaussian
TERMINATOR = 0x0A  # word 39 of every real packet: the bytes 00 00 00 0a


def s32(v: int) -> int:
    """An unsigned 32-bit flag word as the signed int the packet stores."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def tjd_sod(iso: str) -> tuple[int, int]:
    """(TJD, centi-seconds of day) of an ISO UTC time; TJD = MJD - 40000 (astropy, not our code)."""
    mjd = Time(iso, scale="utc").mjd
    day = math.floor(mjd)
    return day - 40000, round((mjd - day) * 8_640_000)


def packet(ptype: int, *, iso: str | None = None, ra: float = 0.0, dec: float = 0.0, words=None) -> bytes:
    w = [0] * 40
    w[0], w[1], w[2], w[39] = ptype, 7, 1, TERMINATOR
    if iso is not None:
        w[5], w[6] = tjd_sod(iso)
    w[7], w[8] = round(ra * 1e4), round(dec * 1e4)
    for i, v in (words or {}).items():
        w[i] = s32(v)
    raw = struct.pack(">40i", *w)
    assert len(raw) == 160
    return raw


def sample(shared_data, name):
    path = shared_data / "gcn" / name
    return parse_notice(path.read_bytes(), hint=path.name)


def assert_same_event(binary, other, *, pos_tol=1e-4, err_tol=1e-4, time_tol=0.011):
    assert (binary.mission, binary.instrument, binary.notice_type) == (other.mission, other.instrument,
                                                                       other.notice_type)
    assert binary.ra == pytest.approx(other.ra, abs=pos_tol) and binary.dec == pytest.approx(other.dec, abs=pos_tol)
    assert binary.error_radius_deg == pytest.approx(other.error_radius_deg, abs=err_tol)
    assert binary.region.containment == other.region.containment
    t_bin = Time(binary.time.rstrip("Z"), scale="utc")
    t_other = Time(other.time.rstrip("Z"), scale="utc")
    assert abs((t_bin - t_other).sec) <= time_tol
    assert (binary.role, binary.retraction) == (other.role, other.retraction)


# -- Swift ------------------------------------------------------------------------------------
def bat_532871(extra_words=None):
    """GRB 120907A's BAT position (voevent/swift_bat_grb_pos_532871.xml): trigger 532871, segment 0,
    TJD 16177 / 1463.08 s, RA 74.7412 Dec -9.3137, 0.05 deg, soln_status 0x3, rate/image S/N 15.49/11.33."""
    words = {4: 532871, 5: 16177, 6: 146308, 9: 4622, 10: 207, 11: 500, 12: -7055, 13: 3764,
             14: 256, 17: 148, 18: 0x3, 19: 0x0, 20: 1133, 21: 1549}
    words.update(extra_words or {})
    return packet(61, ra=74.7412, dec=-9.3137, words=words)


def test_swift_bat_position_every_field():
    a = parse_notice(bat_532871(), topic="gcn.classic.binary.SWIFT_BAT_GRB_POS_ACK")
    assert a.id.startswith("gcn-binary:SWIFT_BAT_GRB_POS_ACK#532871-")
    assert (a.mission, a.instrument, a.notice_type, a.format) == ("Swift", "BAT", "SWIFT_BAT_GRB_POS_ACK", "binary")
    assert a.topic == "gcn.classic.binary.SWIFT_BAT_GRB_POS_ACK"
    assert a.event_id == "532871" and a.extra["segment_num"] == 0 and a.extra["pkt_ser_num"] == 7
    assert a.time == "2012-09-07T00:24:23.08Z"
    assert (a.ra, a.dec) == pytest.approx((74.7412, -9.3137), abs=1e-9)
    assert a.region.kind == "circle" and a.region.radius == pytest.approx(0.05) and a.region.containment == 0.9
    assert a.error_radius_deg == pytest.approx(0.05)
    assert (a.role, a.role_reason, a.retraction, a.retracts, a.alert_type) == ("observation", None, False, None, None)
    assert a.significance == {"rate_snr": pytest.approx(15.49), "image_snr": pytest.approx(11.33)}
    assert a.extra["trigger_type"] == "rate" and a.extra["point_source"] and a.extra["grb_identified"]
    assert a.flags == [] and a.not_astrophysical is None
    assert screen(a) == (True, None)
    json.dumps(a.to_dict())


def test_swift_bat_agrees_with_the_voevent_of_the_same_event(shared_data):
    voe = sample(shared_data, "voevent/swift_bat_grb_pos_532871.xml")
    binary = parse_notice(bat_532871())
    assert_same_event(binary, voe)
    assert binary.event_id == voe.event_id == "532871"
    assert binary.time == voe.time
    assert binary.significance == pytest.approx(voe.significance)
    assert screen(binary) == screen(voe) == (True, None)


def test_swift_bat_agrees_with_gcn_classic_json_of_the_same_packet(shared_data):
    """json/classic_json_swift_bat_grb_pos_ack.json is GCN's JSON conversion of a real type-61 packet:
    trigger 1227767 at 2024-05-11T18:06:53.22, RA 336.6645 Dec 8.5135, 0.05 deg."""
    js = sample(shared_data, "json/classic_json_swift_bat_grb_pos_ack.json")
    raw = packet(61, iso="2024-05-11T18:06:53.22", ra=336.6645, dec=8.5135,
                 words={4: 1227767, 11: 500, 18: 0x3, 20: 852, 21: 1489})
    assert tjd_sod("2024-05-11T18:06:53.22") == (20441, 6521322)
    binary = parse_notice(raw, topic="gcn.classic.binary.SWIFT_BAT_GRB_POS_ACK")
    assert_same_event(binary, js)
    assert binary.time == "2024-05-11T18:06:53.22Z"


def test_swift_segment_number_is_not_part_of_the_trigger():
    a = parse_notice(bat_532871({4: (3 << 24) | 532871}))
    assert a.event_id == "532871" and a.extra["segment_num"] == 3


def test_swift_test_packets_and_test_bit():
    # type 82, SWIFT_BAT_GRB_POS_TEST: GCN's test packet (trigger 99999, RA 180 Dec -35)
    t = parse_notice(packet(82, iso="2024-05-12T07:26:09", ra=180.0, dec=-35.0,
                            words={4: 99999, 11: 500, 18: 0x3}))
    assert (t.notice_type, t.role, t.role_reason) == ("SWIFT_BAT_GRB_POS_TEST", "test",
                                                      "SWIFT_BAT_GRB_POS_TEST is a test notice type")
    assert t.ra == pytest.approx(180.0) and not screen(t)[0] and "test" in screen(t)[1]
    flagged = parse_notice(bat_532871({18: 0x3 | 1 << 30}))
    assert flagged.role == "test" and "2^30" in flagged.role_reason and not screen(flagged)[0]
    on_test_topic = parse_notice(packet(82, iso="2024-05-12T07:26:09", ra=1, dec=1, words={4: 99999, 11: 500}),
                                 topic="gcn.classic.binary.SWIFT_BAT_GRB_POS_TEST")
    assert on_test_topic.role == "test"


def test_swift_retraction_bit():
    r = parse_notice(bat_532871({18: 0x3 | 0x20}))
    assert (r.retraction, r.retracts, r.alert_type, r.role) == (True, "532871", "retraction", "observation")
    assert "def_not_grb" in r.flags and r.not_astrophysical
    assert screen(r) == (False, "retraction of 532871")


def test_swift_catalog_star_tracker_and_bright_star_flags():
    a = parse_notice(bat_532871({18: 0x3 | 0x100 | 0x400, 19: 0x2000 | 0x80000000}))
    assert {"known_source", "star_tracker_lost_lock", "near_bright_star", "crc_error"} <= set(a.flags)
    assert a.not_astrophysical == "star tracker lost lock: position unreliable" and not screen(a)[0]


def xrt_1125809(w16):
    """XRT position of trigger 1125809 (voevent/swift_xrt_pos_1125809.xml): image start TJD 19852 /
    40482.14 s, RA 64.7149 Dec 13.3500, 0.0013 deg (word 11), S/N 9.53."""
    return packet(67, ra=64.7149, dec=13.35, words={4: 1125809, 5: 19852, 6: 4048214, 11: 13, 16: w16, 21: 953})


def test_swift_xrt_agrees_with_the_voevent_of_the_same_event(shared_data):
    voe = sample(shared_data, "voevent/swift_xrt_pos_1125809.xml")
    binary = parse_notice(xrt_1125809(w16=468), topic="gcn.classic.binary.SWIFT_XRT_POSITION")
    assert_same_event(binary, voe)
    assert binary.event_id == voe.event_id == "1125809" and binary.time == voe.time
    assert binary.significance == {"snr": pytest.approx(9.53)} == voe.significance
    assert binary.extra["time_is"] == "image start"


def test_swift_xrt_fine_error_word_only_when_it_agrees():
    # GCN's real packet of trigger 1227767: word 11 = 13 (0.0013 deg), word 16 = 490 (4.90 arcsec)
    fine = parse_notice(xrt_1125809(w16=490))
    assert fine.error_radius_deg == pytest.approx(4.90 / 3600)
    for w16 in (0, 900, -5):  # absent, or not the same radius: the documented word 11 wins
        assert parse_notice(xrt_1125809(w16=w16)).error_radius_deg == pytest.approx(0.0013)
    cosmic = parse_notice(packet(67, iso="2024-05-11T18:08:36.42", ra=1, dec=2,
                                 words={4: 1227767, 11: 13, 18: 0x1}))
    assert "possible_cosmic_ray" in cosmic.flags


def test_swift_uvot_position_and_retraction():
    # GCN's real UVOT packet of trigger 1231488: RA 335.3585 Dec 51.562, 0.0003 deg / 1.10 arcsec, mag 17.84
    words = {4: 1231488, 9: 1784, 10: 10, 11: 3, 16: 110, 18: 0x2, 19: 0x40000000}
    u = parse_notice(packet(81, iso="2024-05-29T03:00:36", ra=335.3585, dec=51.562, words=words),
                     topic="gcn.classic.binary.SWIFT_UVOT_POS")
    assert (u.mission, u.instrument, u.notice_type, u.event_id) == ("Swift", "UVOT", "SWIFT_UVOT_POS", "1231488")
    assert u.time == "2024-05-29T03:00:36Z" and u.extra["magnitude"] == pytest.approx(17.84)
    assert u.error_radius_deg == pytest.approx(1.10 / 3600) and u.region.containment == 0.9
    assert screen(u) == (True, None)
    retracted = parse_notice(packet(81, iso="2024-05-29T03:00:36", ra=335.3585, dec=51.562,
                                    words={**words, 18: 0x22}))
    assert retracted.retraction and retracted.retracts == "1231488"


# -- Fermi ------------------------------------------------------------------------------------
def gbm(ptype, ra, dec, err, words):
    """GRB 180116A (trigger 537755817, TJD 18134 / 2212.81 s) as GBM reported it."""
    return packet(ptype, ra=ra, dec=dec, words={4: 537755817, 5: 18134, 6: 221281, 11: round(err * 1e4), **words})


def class_word(index: int, percent: int) -> int:
    return (round(percent / 100 * 255) << 16) | index


def test_gbm_flight_ground_final_agree_with_the_voevents(shared_data):
    flt = parse_notice(gbm(111, 216.3833, 18.7, 19.8333,
                           {20: 46, 21: 630, 23: class_word(4, 97), 24: class_word(5, 1), 19: 0x1000000}),
                       topic="gcn.classic.binary.FERMI_GBM_FLT_POS")
    voe = sample(shared_data, "voevent/fermi_gbm_flt_pos_537755817.xml")
    assert_same_event(flt, voe)
    assert flt.event_id == voe.event_id == "537755817" and flt.time == voe.time == "2018-01-16T00:36:52.81Z"
    assert flt.region.containment == 0.68 and flt.error_radius_deg == pytest.approx(19.8333 * K68)
    assert flt.most_likely_class == voe.most_likely_class == "GRB"
    assert flt.classification["GRB"] == pytest.approx(voe.classification["GRB"], abs=0.005)
    assert flt.classification["GENERIC_SGR"] == pytest.approx(0.01, abs=0.005)
    assert flt.significance == {"snr": pytest.approx(6.30)} and flt.extra["sequence_num"] == 46
    assert screen(flt) == screen(voe) == (True, None)

    gnd = parse_notice(gbm(112, 214.74, 28.14, 11.19, {21: 63}), topic="gcn.classic.binary.FERMI_GBM_GND_POS")
    assert_same_event(gnd, sample(shared_data, "voevent/fermi_gbm_gnd_pos_537755817.xml"))
    assert gnd.significance == {"snr": pytest.approx(6.3)}

    fin = parse_notice(gbm(115, 212.77, 27.05, 5.2, {18: 0x8000001, 19: 0x40000000}),
                       topic="gcn.classic.binary.FERMI_GBM_FIN_POS")
    voe_fin = sample(shared_data, "voevent/fermi_gbm_fin_pos_537755817.xml")
    assert_same_event(fin, voe_fin)
    assert fin.extra["duration_class"] == "long" and fin.error_radius_deg == pytest.approx(5.2 * K68)
    assert fin.event_id == voe_fin.event_id


def test_gbm_test_packets_flags_and_retraction():
    test_type = parse_notice(packet(119, iso="2024-05-13T12:04:57", ra=36.0, dec=35.0,
                                    words={4: 99999, 11: 58000, 23: class_word(4, 100)}))
    assert (test_type.notice_type, test_type.role) == ("FERMI_GBM_POS_TEST", "test") and not screen(test_type)[0]
    flagged = parse_notice(gbm(111, 216.3833, 18.7, 19.8333, {18: 1 << 30, 23: class_word(4, 97)}))
    assert flagged.role == "test" and "trig_id" in flagged.role_reason
    retracted = parse_notice(gbm(112, 214.74, 28.14, 11.19, {18: 0x20}))
    assert (retracted.retraction, retracted.retracts, retracted.role) == (True, "537755817", "observation")
    assert screen(retracted) == (False, "retraction of 537755817")


def test_gbm_non_grb_classes_are_not_acted_on():
    tgf = parse_notice(gbm(111, 10.0, 20.0, 10.0, {23: class_word(19, 90), 24: class_word(4, 10)}))
    assert tgf.most_likely_class == "TGF" and tgf.not_astrophysical == "most likely class is TGF, not a GRB"
    assert tgf.classification == {"TGF": pytest.approx(0.9, abs=0.005), "GRB": pytest.approx(0.1, abs=0.005)}
    assert not screen(tgf)[0]
    odd = parse_notice(gbm(111, 10.0, 20.0, 10.0, {23: class_word(33, 100)}))
    assert odd.most_likely_class == "CLASS_33" and not screen(odd)[0]


def test_fermi_lat_positions():
    # GCN's real LAT_OFFLINE packet: trigger 738511436, RA 128.0999 Dec -14.48, 0.19 deg
    lat = parse_notice(packet(128, iso="2024-05-27T14:03:51.5", ra=128.0999, dec=-14.48,
                              words={4: 738511436, 11: 1900, 18: 0x20000000, 19: 0x40000000}),
                       topic="gcn.classic.binary.FERMI_LAT_OFFLINE")
    assert (lat.mission, lat.instrument, lat.event_id, lat.role) == ("Fermi", "LAT", "738511436", "observation")
    assert lat.region.radius == pytest.approx(0.19) and lat.region.containment == 0.68
    assert lat.error_radius_deg == pytest.approx(0.19 * K68) and screen(lat) == (True, None)
    upd = parse_notice(packet(121, iso="2024-05-27T14:03:51.5", ra=1, dec=2, words={4: 5, 11: 1000, 18: 0x20}))
    assert upd.notice_type == "FERMI_LAT_POS_UPD" and upd.retraction
    test = parse_notice(packet(124, iso="2024-05-11T06:15:20", ra=180, dec=35, words={4: 99999, 11: 5000}))
    assert test.role == "test"


# -- INTEGRAL ---------------------------------------------------------------------------------
def test_integral_agrees_with_the_voevent_and_its_test_bit(shared_data):
    """voevent/integral_wakeup_trig0.xml: TJD 17896 / 43403.68 s, RA 1.2343 Dec 2.3455, 0.0169 deg,
    Test_mpos 0x80000000 (GCN's INTEGRAL test packet); burst_error is in arcsec (61" = 0.01694 deg)."""
    raw = packet(53, ra=1.2343, dec=2.3455, words={4: 0, 5: 17896, 6: 4340368, 11: 61, 12: 0x80000000})
    binary = parse_notice(raw, topic="gcn.classic.binary.INTEGRAL_WAKEUP")
    voe = sample(shared_data, "voevent/integral_wakeup_trig0.xml")
    assert_same_event(binary, voe)
    assert binary.event_id == voe.event_id == "0" and binary.role == "test"
    assert binary.error_radius_deg == pytest.approx(61 / 3600)
    real = parse_notice(packet(54, iso="2024-05-23T12:03:23.68", ra=100.0, dec=-20.0,
                               words={4: (3 << 16) | 9876, 11: 120}))
    assert (real.notice_type, real.event_id, real.extra["sequence_num"], real.role) == (
        "INTEGRAL_REFINED", "9876", 3, "observation")
    assert real.error_radius_deg == pytest.approx(120 / 3600) and screen(real) == (True, None)


# -- IceCube ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ptype,file,ra,dec,err,tjd,centi", [
    (173, "voevent/icecube_astrotrack_gold_190730.xml", 225.7899, 10.47, 1.185, 18694, 7504131),
    (174, "voevent/icecube_astrotrack_bronze_220822.xml", 273.4834, 22.1648, 1.2755, 19813, 7359003),
])
def test_icecube_tracks_agree_with_the_voevents(shared_data, ptype, file, ra, dec, err, tjd, centi):
    raw = packet(ptype, ra=ra, dec=dec, words={5: tjd, 6: centi, 11: round(err * 1e4), 19: 0x18000000})
    name = "ICECUBE_ASTROTRACK_GOLD" if ptype == 173 else "ICECUBE_ASTROTRACK_BRONZE"
    binary = parse_notice(raw, topic=f"gcn.classic.binary.{name}")
    voe = sample(shared_data, file)
    assert_same_event(binary, voe)
    assert binary.notice_type == name and binary.region.containment == 0.9
    assert binary.error_radius_deg == pytest.approx(err)
    assert binary.event_id == binary.time  # the event time keys an IceCube event (its revisions, its retraction)
    assert screen(binary) == (True, None)


def test_icecube_test_retraction_and_undefined_position():
    base = {5: 18694, 6: 7504131, 11: 11850}
    t = parse_notice(packet(173, ra=225.7899, dec=10.47, words={**base, 18: 0x2}))
    assert t.role == "test" and "Test bit" in t.role_reason
    internal = parse_notice(packet(173, ra=225.7899, dec=10.47, words={**base, 18: 1 << 30}))
    assert internal.role == "test"
    r = parse_notice(packet(174, ra=225.7899, dec=10.47, words={**base, 18: 0x20}))
    assert r.retraction and r.retracts == "2019-07-30T20:50:41.31Z" and screen(r)[0] is False
    nopos = parse_notice(packet(173, ra=225.7899, dec=10.47, words={**base, 18: 0x4}))
    assert nopos.ra is None and nopos.region is None and screen(nopos) == (False, "no usable position")
    cascade = parse_notice(packet(176, iso="2024-05-18T06:50:07.88", ra=180.393, dec=21.5767, words={11: 153764}))
    assert cascade.notice_type == "ICECUBE_CASCADE" and cascade.error_radius_deg == pytest.approx(15.3764)


# -- refusals ---------------------------------------------------------------------------------
def test_truncated_and_oversized_packets():
    raw = bat_532871()
    for bad in (raw[:159], raw + b"\0"):
        with pytest.raises(NoticeError, match=rf"160 bytes, got {len(bad)}"):
            parse_binary_notice(bad, "gcn.classic.binary.SWIFT_BAT_GRB_POS_ACK")
        with pytest.raises(NoticeError, match=rf"160 bytes, got {len(bad)}"):
            parse_notice(bad, topic="gcn.classic.binary.SWIFT_BAT_GRB_POS_ACK")
    with pytest.raises(NoticeError):  # a truncated file in the drop folder (no topic): still a clear refusal
        parse_notice(raw[:159], hint="SWIFT_BAT_GRB_POS_ACK.bin")


@pytest.mark.parametrize("ptype,name", [(999, "unknown type"), (131, "FERMI_GBM_SUBTHRESH"), (150, "LVC_PRELIMINARY"),
                                        (110, "FERMI_GBM_ALERT"), (63, "SWIFT_BAT_GRB_LC"), (2, "TEST_COORDS")])
def test_unread_types_name_their_number_and_name(ptype, name):
    with pytest.raises(NoticeError, match=rf"type {ptype} \({name}\).*does not decode"):
        parse_notice(packet(ptype, iso="2024-05-11T18:06:53.22", ra=10, dec=10, words={11: 500}))


def test_control_packets_are_still_recognised():
    for ptype, name in ((3, "IM_ALIVE"), (4, "KILL_SOCKET")):
        a = parse_notice(packet(ptype))
        assert (a.notice_type, a.role, a.format, a.mission) == (name, "control", "control", "GCN")
        assert screen(a)[0] is False


def test_packet_on_the_wrong_topic():
    with pytest.raises(NoticeError, match="on topic gcn.classic.binary.FERMI_GBM_FLT_POS.*not a FERMI_GBM_FLT_POS"):
        parse_notice(bat_532871(), topic="gcn.classic.binary.FERMI_GBM_FLT_POS")


def test_corrupt_words_are_refused_never_read_as_a_position():
    with pytest.raises(NoticeError, match="type 61 .*TJD 0 .*not a valid event time"):
        parse_notice(bat_532871({5: 0}))
    with pytest.raises(NoticeError, match="not a valid event time"):
        parse_notice(bat_532871({6: 9_000_000}))
    with pytest.raises(NoticeError, match="position out of range"):
        parse_notice(bat_532871({8: 950_000}))
    with pytest.raises(NoticeError, match="position out of range"):
        parse_notice(bat_532871({7: -1}))
    with pytest.raises(NoticeError, match="negative error radius"):
        parse_notice(bat_532871({11: -500}))


def test_no_localisation_yet_and_position_without_error():
    empty = parse_notice(packet(111, iso="2024-05-12T20:24:15.28", words={4: 1, 23: class_word(4, 100)}))
    assert empty.ra is None and "no_localization_yet" in empty.flags and screen(empty)[0] is False
    bare = parse_notice(bat_532871({11: 0}))
    assert bare.ra == pytest.approx(74.7412) and bare.region is None and bare.error_radius_deg is None


def test_cli_parse_binary_file(tmp_path):
    path = tmp_path / "SWIFT_BAT_GRB_POS_ACK_532871.bin"
    path.write_bytes(bat_532871())
    out = subprocess.run([sys.executable, "-m", "stdd", "alert", "parse", str(path), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert (d["format"], d["event_id"], d["time"], d["actionable"]) == ("binary", "532871",
                                                                        "2012-09-07T00:24:23.08Z", True)
    assert d["error_radius_deg"] == pytest.approx(0.05)


# -- fuzzing ----------------------------------------------------------------------------------
def check_parsed(raw):
    try:
        alert = parse_notice(raw)
    except NoticeError:
        return None
    json.dumps(alert.to_dict())
    screen(alert)
    alert.region_dict()
    if alert.ra is not None:
        assert 0 <= alert.ra < 360 and -90 <= alert.dec <= 90
    return alert


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=160, max_size=160))
def test_random_160_byte_packets_raise_only_notice_error(raw):
    check_parsed(raw)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), st.lists(st.integers(-(2 ** 31), 2 ** 31 - 1), min_size=39, max_size=39))
def test_random_words_under_every_decoded_type_raise_only_notice_error(ptype, words):
    check_parsed(struct.pack(">40i", ptype, *words))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), st.integers(1, 60000), st.integers(0, 8_640_000),
       st.integers(0, 3_600_000), st.integers(-900_000, 900_000), st.integers(0, 1_800_000),
       st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1))
def test_plausible_packets_always_parse(ptype, tjd, centi, ra, dec, err, trig_id, misc):
    raw = struct.pack(">40i", ptype, *([0] * 4), tjd, centi, ra, dec, 0, 0, err, *([0] * 6), s32(trig_id), s32(misc),
                      *([0] * 20))
    alert = check_parsed(raw)
    assert alert is not None and alert.time is not None


# -- through the daemon's alert path, real SQLite -------------------------------------------------
@pytest.fixture
def env(tmp_path):
    with alert_service(tmp_path, priority=7) as env:
        yield env


def test_binary_packet_dropped_into_the_drop_folder_is_stored_and_acted_on(env):
    service, tmp = env
    drop = DropFolderIntake(service.settings, service.handle)
    drop.start()
    try:
        folder = tmp / "drop"
        (folder / "SWIFT_BAT_GRB_POS_ACK_532871.bin").write_bytes(bat_532871())
        (folder / "cut.bin").write_bytes(bat_532871()[:159])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ((folder / "done" / "SWIFT_BAT_GRB_POS_ACK_532871.bin").exists()
                                                   and (folder / "failed" / "cut.bin").exists()):
            time.sleep(0.05)
        assert (folder / "done" / "SWIFT_BAT_GRB_POS_ACK_532871.bin").exists()
        assert (folder / "failed" / "cut.bin").exists() and (folder / "failed" / "cut.bin.error").read_text().strip()
    finally:
        drop.stop()
    rows = service.store.list_alerts()
    assert len(rows) == 1
    row = rows[0]
    assert (row["mission"], row["instrument"], row["notice_type"], row["event_id"], row["role"]) == (
        "Swift", "BAT", "SWIFT_BAT_GRB_POS_ACK", "532871", "observation")
    assert (row["ra"], row["dec"]) == pytest.approx((74.7412, -9.3137))
    assert row["error_radius_deg"] == pytest.approx(0.05)
    assert row["time"] == "2012-09-07T00:24:23.08Z" and row["state"] == "live" and row["priority"] == 7
    full = service.store.get_alert(row["id"])
    assert full["parsed"]["format"] == "binary" and full["region"]["kind"] == "circle"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list((tmp / "requests").glob("*.observe.json")):
        time.sleep(0.05)
    assert len(list((tmp / "requests").glob("*.observe.json"))) == 1
    assert [r.alert_id for r in service.live_regions()] == [row["id"]]


def test_binary_topic_then_its_retraction_through_the_service(env):
    service, tmp = env
    topic = "gcn.classic.binary.SWIFT_BAT_GRB_POS_ACK"
    first = service.handle(IntakeMessage(bat_532871(), topic, 0, 1))
    first.wait(30)
    assert first.state == "parsed" and first.decision.act and len(first.action_ids) == 1
    again = service.handle(IntakeMessage(bat_532871(), topic, 0, 2))
    assert again.state == "duplicate" and not again.action_ids
    retraction = service.handle(IntakeMessage(bat_532871({18: 0x23}), topic, 0, 3))
    retraction.wait(30)
    assert retraction.state == "parsed" and retraction.decision.kind == "cancel"
    assert service.store.get_alert(first.alert_id)["state"] == "retracted"
    assert service.live_regions() == []
    assert service.store.message_counts() == {"parsed": 2, "duplicate": 1}
    assert len(list((tmp / "requests").glob("*.cancel.json"))) == 1
