"""GCN JSON notices (gcn.notices.* and gcn.classic.json.*), every mission, one reader.

The unified GCN schema (core/Localization, Alert, Event, Statistics) is shared by all
missions, so one reader covers them: ra/dec + ra_dec_error (a circle, or [a, b, pa] an
ellipse) or rectangular_error_corners, containment_probability (0.9 when absent),
systematic_included, healpix_url / base64 healpix_file. Positions nested elsewhere are
looked for where missions put them (IceCube most_probable_direction and coincident_events,
BOOM data.targets, a `localization` object). The family (swift.bat.guano, fermi.gbm.trigger,
...) comes from `$schema`, else the topic, else the file name.
"""
from __future__ import annotations

import hashlib
import json
import math
import re

from . import gcn
from .localisation import set_position
from .notice import Alert, NoticeError
from .region import Circle, Ellipse, Polygon, RegionError, Skymap

_NOTICE_KEYS = {"$schema", "mission", "instrument", "trigger_time", "alert_datetime", "ra", "dec", "id",
                "alert_type", "alert_tense", "event_name", "ra_dec_error", "healpix_url", "healpix_file",
                "ref_ID", "most_probable_direction", "data", "record_number"}
_INSTRUMENTS = {"bat": "BAT", "wxt": "WXT", "gbm": "GBM", "lat": "LAT", "gsc": "GSC", "eclairs": "ECLAIRs",
                "grm": "GRM", "xrt": "XRT", "uvot": "UVOT", "fxt": "FXT"}
_GRB_MONITORS = {("Fermi", "GBM"), ("BurstCube", None), ("Swift", "BAT-GUANO"), ("SVOM", "GRM"),
                 ("GECAM", None), ("CALET", "GBM")}
_UNIT_SCALE = {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "arcmin": 1 / 60, "arcsec": 1 / 3600}


def _float(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def family_from_schema(schema: str | None) -> str | None:
    if not schema:
        return None
    m = re.search(r"/notices/(.+?)\.schema\.json", str(schema))
    return m.group(1).replace("/", ".").lower() if m else None


def classic_type_in(text: str | None) -> str | None:
    """The longest classic notice type name found in `text` (a topic or file name)."""
    if not text:
        return None
    upper = re.sub(r"[^A-Z0-9]+", "_", str(text).upper())
    best = None
    for name in gcn.PACKET_NUMBERS:
        if re.search(rf"(^|_){name}(_|$)", upper) and (best is None or len(name) > len(best)):
            best = name
    return best


def parse_json_notice(data: dict, raw: bytes, topic: str | None = None, hint: str | None = None) -> Alert:
    if not isinstance(data, dict):
        raise NoticeError(f"JSON notice must be an object, got {type(data).__name__}")
    gcn_topic = bool(topic and topic.startswith("gcn."))
    if not (_NOTICE_KEYS & set(data)) and not gcn_topic:
        raise NoticeError("JSON has none of the keys of a GCN notice")

    family = family_from_schema(data.get("$schema"))
    classic = None
    if topic and topic.startswith("gcn.classic.json."):
        classic = topic.split(".", 3)[3]
    elif family is None and topic and topic.startswith("gcn.notices."):
        family = topic[len("gcn.notices."):].lower()
    if family is None and classic is None:
        classic = classic_type_in(hint)
    if family is None and classic is None and hint:
        stem = re.sub(r"[^a-z0-9]+", "_", hint.lower())
        for key in sorted(gcn.MISSION_NAMES, key=len, reverse=True):
            if re.search(rf"(^|_){re.escape(key.replace(' ', '_'))}(_|$)", stem):
                family = key.replace(" ", "_")
                break

    mission = gcn.canonical_mission(data.get("mission"))
    instrument = data.get("instrument")
    if classic:
        m2, i2 = gcn.mission_for_type(classic)
        mission, instrument = mission or m2, instrument or i2
    if family:
        parts = family.split(".")
        mission = mission or gcn.canonical_mission(parts[0])
        if instrument is None and len(parts) > 1 and parts[1] in _INSTRUMENTS:
            instrument = _INSTRUMENTS[parts[1]]
    subtype = data.get("subtype")
    notice_type = classic or family or "json"
    if subtype:
        notice_type = f"{notice_type}:{subtype}"

    event_id = _first(data.get("id")) or _first(data.get("event_name")) or data.get("ref_ID") \
        or data.get("trigger_number")
    event_id = str(event_id) if event_id is not None else None
    alert_type = data.get("alert_type")
    alert_type = str(alert_type) if alert_type is not None else None
    record = data.get("record_number")
    discriminator = record if record is not None else data.get("alert_datetime")
    if discriminator is None:
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        discriminator = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    source = mission or family or classic or "gcn"
    if instrument:
        source += f"/{instrument}"
    nid = f"{source}#{event_id or '-'}/{alert_type or '-'}/{discriminator}"
    if subtype:
        nid += f"/{subtype}"

    alert = Alert(id=nid, mission=mission, instrument=str(instrument) if instrument else None,
                  notice_type=notice_type, alert_type=alert_type, format="json", topic=topic,
                  event_id=event_id)
    names = data.get("event_name")
    alert.event_name = ", ".join(map(str, names)) if isinstance(names, list) else (str(names) if names else None)
    alert.time = gcn.iso_utc(data.get("trigger_time") or data.get("observation_start") or data.get("alert_datetime"))
    alert.created = gcn.iso_utc(data.get("alert_datetime"))
    if family:
        alert.extra["family"] = family

    # -- role ------------------------------------------------------------------------------
    tense = str(data.get("alert_tense") or "").lower()
    if tense == "test":
        alert.role, alert.role_reason = "test", 'alert_tense "test"'
    elif tense == "archival":
        alert.role, alert.role_reason = "test", 'alert_tense "archival" (re-analysis of old data)'
    elif tense == "injection":
        alert.role, alert.role_reason = "mock", 'alert_tense "injection"'
    if family and "test" in family.split("."):
        alert.role, alert.role_reason = "test", f"test notice family {family}"
    if topic and re.search(r"(^|[._])test$", topic.lower()):
        alert.role, alert.role_reason = "test", f"test topic {topic}"
    if classic and "TEST" in classic.split("_"):
        alert.role, alert.role_reason = "test", f"{classic} is a test notice type"
    if tense:
        alert.extra["alert_tense"] = tense

    # -- retraction ------------------------------------------------------------------------
    if (alert_type or "").lower() == "retraction":
        alert.retraction = True
        alert.retracts = event_id

    # -- position and error region ---------------------------------------------------------
    _localize(alert, data)

    # -- skymap ----------------------------------------------------------------------------
    if data.get("healpix_url"):
        alert.skymap_url = str(data["healpix_url"])
    if data.get("healpix_file"):
        try:
            alert.skymap = Skymap.from_base64(str(data["healpix_file"]))
        except RegionError as e:
            alert.skymap_error = f"healpix_file: {e}"

    # -- classification, significance, flags -----------------------------------------------
    classification = data.get("classification")
    if isinstance(classification, dict):
        alert.classification = {str(k): v for k, v in classification.items() if _float(v) is not None}
        grb_monitor = (mission, instrument) in _GRB_MONITORS or (mission, None) in _GRB_MONITORS
        best, why = gcn.classify(alert.classification, grb_monitor=grb_monitor)
        alert.most_likely_class, alert.not_astrophysical = best, why
    for key in ("far", "p_astro", "rate_snr", "image_snr", "snr", "importance", "pval_generic",
                "pval_bayesian", "signalness", "association_probability"):
        v = _float(data.get(key))
        if v is not None:
            alert.significance["far_hz" if key == "far" else key] = v
    if family and family.split(".")[-1] == "known":
        alert.flags.append("known_source")
        alert.exact_position = alert.exact_position or f"a known source ({family} notice)"
    if data.get("known_source"):
        alert.flags.append("known_source")
        alert.extra["known_source"] = data["known_source"]
        alert.exact_position = alert.exact_position or f"the known source {data['known_source']}"
    if data.get("reference_catalog") and alert.ra is not None:
        alert.exact_position = alert.exact_position or f"a catalogued source ({data['reference_catalog']})"
    return alert


def _first(v):
    if isinstance(v, list):
        return v[0] if v else None
    return v


def _localize(alert: Alert, data: dict) -> None:
    loc = data
    if _float(data.get("ra")) is None:
        for candidate in (data.get("localization"), data.get("most_probable_direction"),
                          _first((data.get("data") or {}).get("targets")) if isinstance(data.get("data"), dict) else None):
            if isinstance(candidate, dict) and _float(candidate.get("ra")) is not None:
                loc = candidate
                break
    ra, dec = _float(loc.get("ra")), _float(loc.get("dec"))
    if not set_position(alert, loc.get("ra"), loc.get("dec")):
        if data.get("rectangular_error_corners"):
            ra = dec = None  # a box without a centre: still usable below
        else:
            return
    if loc is not data and loc is not data.get("localization") and (loc.get("event_name") or loc.get("name")):
        alert.exact_position = f"the position of the named target {loc.get('event_name') or loc.get('name')}"
    err_src = loc if ("ra_dec_error" in loc or "rectangular_error_corners" in loc) else data
    if loc is data.get("most_probable_direction") and isinstance(data.get("coincident_events"), list):
        # IceCube's LVK search: the error of the coincident event nearest the most probable direction
        from .region import angular_separation

        best = None
        for ev in data["coincident_events"]:
            l2 = ev.get("localization") if isinstance(ev, dict) else None
            if isinstance(l2, dict) and _float(l2.get("ra")) is not None and _float(l2.get("dec")) is not None:
                d = float(angular_separation(ra, dec, float(l2["ra"]), float(l2["dec"])))
                if best is None or d < best[0]:
                    best = (d, l2)
        if best is not None:
            err_src = best[1]
    containment = _float(err_src.get("containment_probability", data.get("containment_probability")))
    containment = containment if containment and 0 < containment < 1 else 0.9
    sys_incl = err_src.get("systematic_included", data.get("systematic_included"))
    sys_incl = bool(sys_incl) if sys_incl is not None else None
    unit = str(err_src.get("ra_dec_error_units") or err_src.get("ra_dec_error_unit") or "deg").lower()
    scale = _UNIT_SCALE.get(unit, 1.0)
    sys_err = None
    for key in ("ra_dec_error_systematic", "systematic_error", "sys_error", "ra_dec_error_sys"):
        v = _float(err_src.get(key, data.get(key)))
        if v and v > 0:
            sys_err = v * scale
    err = err_src.get("ra_dec_error")
    first = err[0] if isinstance(err, list) and err else err
    if _float(first) is not None:
        alert.stated_error_deg = _float(first) * scale
    elif first is not None:
        alert.flags.append(f"bad_error_region: ra_dec_error {err!r} is not a number")
    corners = err_src.get("rectangular_error_corners")
    try:
        if isinstance(corners, list) and len(corners) >= 3:
            alert.region = Polygon([(float(c[0]), float(c[1])) for c in corners], containment, sys_incl)
            if alert.ra is None:
                alert.ra, alert.dec = alert.region.center
        elif isinstance(err, (int, float)) or (isinstance(err, list) and len(err) == 1):
            r = _float(err[0] if isinstance(err, list) else err)
            if r and r > 0:
                r *= scale
                if sys_err:
                    r, sys_incl = math.hypot(r, sys_err), True
                alert.region = Circle(alert.ra, alert.dec, min(r, 180.0), containment, sys_incl)
        elif isinstance(err, list) and len(err) in (2, 3):
            a, b = _float(err[0]), _float(err[1])
            pa = _float(err[2]) if len(err) == 3 else 0.0
            if a and b and a > 0 and b > 0:
                a, b = a * scale, b * scale
                if sys_err:
                    a, b, sys_incl = math.hypot(a, sys_err), math.hypot(b, sys_err), True
                if math.isclose(a, b):
                    alert.region = Circle(alert.ra, alert.dec, min(a, 180.0), containment, sys_incl)
                else:
                    alert.region = Ellipse(alert.ra, alert.dec, a, b, pa or 0.0, containment, sys_incl)
    except (RegionError, TypeError, ValueError, IndexError) as e:
        alert.flags.append(f"bad_error_region: {e}")
