"""Policy: configured rules, visibility from the site (astropy), tests/mocks/retractions never act."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from stdd.alerts import Policy, parse_notice, site_visibility
from stdd.alerts.latency import swift_voevent
from stdd.config import settings_from_dict

# Cerro Pachon-like site; 2026-01-15 06:00 UTC is 03:00 local, deep night in summer
SITE = {"name": "Test site", "lat": -30.24, "lon": -70.74, "elevation": 2700.0, "min_altitude": 20.0,
        "max_sun_altitude": -12.0, "min_moon_separation": 10.0}
NIGHT = datetime(2026, 1, 15, 6, 0, tzinfo=timezone.utc).timestamp()
NOON = datetime(2026, 1, 15, 16, 0, tzinfo=timezone.utc).timestamp()


def zenith_now(t: float) -> tuple[float, float]:
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    with iers.conf.set_temp("auto_download", False):
        loc = EarthLocation(lat=SITE["lat"] * u.deg, lon=SITE["lon"] * u.deg, height=SITE["elevation"] * u.m)
        c = SkyCoord(alt=85 * u.deg, az=0 * u.deg, frame=AltAz(obstime=Time(t, format="unix"), location=loc)).icrs
    return float(c.ra.deg), float(c.dec.deg)


def settings(rules, window=2.0):
    return settings_from_dict({"site": SITE, "alerts": {"rules": rules, "visibility_window_hours": window, "actions": {
        "a": {"kind": "exec", "command": ["true"]}, "b": {"kind": "exec", "command": ["true"]}}}})


def test_visibility_from_the_site():
    s = settings([{}])
    ra, dec = zenith_now(NIGHT)
    up = site_visibility([ra], [dec], s.site, NIGHT, 1.0)
    assert up["visible"] and up["first_visible"] == pytest.approx(NIGHT) and up["max_altitude"] > 80
    never = site_visibility([ra], [80.0], s.site, NIGHT, 12.0)  # dec +80 never rises above 20 deg at lat -30
    assert not never["visible"] and never["max_altitude"] < 20
    daytime = site_visibility([ra], [dec], s.site, NOON, 1.0)
    assert not daytime["visible"] and daytime["sun_altitude_now"] > 0


def test_moon_constraint():
    from astropy.coordinates import get_body
    from astropy.time import Time
    from astropy.utils import iers

    s = settings([{}])
    with iers.conf.set_temp("auto_download", False):
        moon = get_body("moon", Time(NIGHT, format="unix"))  # geocentric (GCRS) direction
    near = site_visibility([float(moon.ra.deg)], [float(moon.dec.deg)], s.site, NIGHT, 0.5)
    assert near["moon_separation_min"] < 2 and not near["visible"]


def test_rules_first_match_radius_priority_and_visibility():
    ra, dec = zenith_now(NIGHT)
    s = settings([
        {"missions": ["fermi"], "max_error_radius_deg": 5.0, "priority": 50, "actions": ["b"]},
        {"missions": ["Swift"], "notice_types": ["SWIFT_BAT_*"], "priority": 90, "actions": ["a", "b"]},
        {"priority": 1, "require_visible": False, "actions": ["a"]},
    ])
    policy = Policy(s.alerts, s.site)
    bat = parse_notice(swift_voevent(1, ra=ra, dec=dec))
    d = policy.decide(bat, NIGHT)
    assert (d.act, d.kind, d.rule, d.priority, d.actions) == (True, "observe", 1, 90, ["a", "b"])
    assert d.visibility["visible"]
    # not visible by day: the catch-all rule without visibility takes it, with its low priority
    d = policy.decide(bat, NOON)
    assert (d.act, d.rule, d.priority) == (True, 2, 1)


def test_error_radius_limit_and_no_match():
    s = settings([{"missions": ["Fermi"], "max_error_radius_deg": 5.0, "require_visible": False}])
    policy = Policy(s.alerts, s.site)
    gbm = parse_notice(swift_voevent(2).replace(b'value="61"', b'value="111"'))  # FERMI_GBM_FLT_POS, 0.05 deg @68 %
    assert policy.decide(gbm, NIGHT).act
    wide = parse_notice(swift_voevent(3).replace(b'value="61"', b'value="111"').replace(b"0.0500", b"9.0"))
    d = policy.decide(wide, NIGHT)
    assert not d.act and "larger than 5" in d.reason
    swift = parse_notice(swift_voevent(4))
    d = policy.decide(swift, NIGHT)
    assert not d.act and d.reason == "no policy rule matches"


def test_tests_mocks_and_retractions_never_act(shared_data):
    s = settings([{"roles": ["observation", "test", "mock"], "require_visible": False, "actions": ["a"]}])
    policy = Policy(s.alerts, s.site)
    test = parse_notice((shared_data / "gcn/voevent/fermi_gbm_subthresh_546126856_roletest.xml").read_bytes())
    d = policy.decide(test, NIGHT)
    assert (d.act, d.kind) == (False, "ignore") and "test" in d.reason
    mock = parse_notice((shared_data / "gcn/json/igwn_gwalert_MS181101ab_preliminary.json").read_bytes())
    assert not policy.decide(mock, NIGHT).act
    retraction = parse_notice((shared_data / "gcn/json/chime_frb_retraction.json").read_bytes())
    d = policy.decide(retraction, NIGHT)
    assert (d.act, d.kind) == (False, "cancel")


def test_skymap_visibility_uses_credible_region():
    from alert_skymap import make_gwalert

    ra, dec = zenith_now(NIGHT)
    s = settings([{"missions": ["LVK"], "priority": 70, "actions": ["a"]}], window=1.0)
    policy = Policy(s.alerts, s.site)
    visible = parse_notice(make_gwalert("S260115a", ra0=ra, dec0=dec), topic="igwn.gwalert")
    d = policy.decide(visible, NIGHT)
    assert d.act and d.visibility["points"] > 1
    hidden = parse_notice(make_gwalert("S260115b", ra0=ra, dec0=75.0, sigma_a=3.0, sigma_b=1.0),
                          topic="igwn.gwalert")
    d = policy.decide(hidden, NIGHT)
    assert not d.act and "not visible" in d.reason
