"""VOEvent 1.1 and 2.0 notices (gcn.classic.voevent.*, LVC VOEvents, socket control packets).

Tags are matched by local name, so both namespaces (and none) read the same. The error
radius is WhereWhen's Error2Radius, in the unit of Position2D, at the mission's documented
containment (`gcn.voevent_containment`); 0,0,0 means "no localisation yet". Role comes from
the VOEvent role attribute, refined by the notice's own test flags, LVK mock superevents
(M…) and hardware injections.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from . import gcn
from .localisation import set_position, sky_position
from .notice import Alert, NoticeError
from .region import Circle, RegionError

_ANGLE_UNITS = {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "arcmin": 1 / 60, "arcsec": 1 / 3600,
                "rad": 180 / math.pi, "radian": 180 / math.pi, "radians": 180 / math.pi}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _find(elem, *path):
    """First descendant following local names (each step searches all depths)."""
    cur = elem
    for name in path:
        nxt = None
        for child in cur.iter():
            if child is not cur and _local(child.tag) == name:
                nxt = child
                break
        if nxt is None:
            return None
        cur = nxt
    return cur


def _text(elem) -> str | None:
    return elem.text.strip() if elem is not None and elem.text and elem.text.strip() else None


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_voevent(raw: bytes, topic: str | None = None) -> Alert:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise NoticeError(f"not well-formed XML: {e}") from None
    if _local(root.tag) != "VOEvent":
        raise NoticeError(f"XML root is <{_local(root.tag)}>, not a VOEvent")
    ivorn = root.get("ivorn") or None
    voe_role = (root.get("role") or "observation").strip().lower()

    what = _find(root, "What")
    params: dict[str, str] = {}
    groups: dict[str, dict[str, str]] = {}
    units: dict[str, str] = {}
    if what is not None:
        for p in what.iter():
            if _local(p.tag) != "Param":
                continue
            name = p.get("name")
            if not name:
                continue
            params.setdefault(name, (p.get("value") or "").strip())
            if p.get("unit"):
                units.setdefault(name, p.get("unit").strip())
        for g in what.iter():
            if _local(g.tag) != "Group":
                continue
            key = g.get("name") or g.get("type") or ""
            gp = groups.setdefault(key, {})
            for p in g:
                if _local(p.tag) == "Param" and p.get("name"):
                    gp[p.get("name")] = (p.get("value") or "").strip()

    # -- type, mission ---------------------------------------------------------------------
    notice_type = None
    ptype = params.get("Packet_Type")
    if ptype:
        try:
            notice_type = gcn.PACKET_TYPES.get(int(float(ptype)), f"PACKET_TYPE_{int(float(ptype))}")
        except ValueError:
            notice_type = None
    if topic and topic.startswith("gcn.classic.") and topic.count(".") >= 3:
        notice_type = notice_type or topic.split(".", 3)[3]
    mission, instrument = gcn.mission_for_type(notice_type)
    if mission is None and ivorn:
        # ivo://nasa.gsfc.gcn/SWIFT#..., ivo://gwnet/LVC#...
        stream = ivorn.split("//", 1)[-1].split("#", 1)[0].rsplit("/", 1)[-1]
        mission = gcn.canonical_mission({"lvc": "lvk"}.get(stream.lower(), stream))
    if what is None and ptype is None and ivorn is None:
        raise NoticeError("VOEvent has neither What nor an IVORN")

    alert = Alert(id=ivorn or "", mission=mission, instrument=instrument, notice_type=notice_type,
                  format="voevent", topic=topic, ivorn=ivorn)
    alert.extra["voevent_version"] = root.get("version")
    alert.extra["voevent_role"] = voe_role
    alert.created = gcn.iso_utc(_text(_find(root, "Who", "Date")))

    # -- control packets -------------------------------------------------------------------
    if notice_type in gcn.CONTROL_TYPES or voe_role == "utility":
        alert.role = "control"
        alert.role_reason = f"{notice_type or 'utility'} control packet"
        alert.id = alert.id or f"gcn-control:{notice_type}:{alert.created or ''}"
        alert.alert_type = "control"
        return alert

    # -- identifiers -----------------------------------------------------------------------
    grace = params.get("GraceID")
    if grace:
        alert.event_id = grace
        alert.mission, alert.instrument = "LVK", params.get("Instruments") or None
        alert.alert_type = params.get("AlertType") or None
    elif params.get("run_id") and params.get("event_id"):
        alert.event_id = f"{params['run_id']}_{params['event_id']}"
    else:
        alert.event_id = params.get("TrigID") or params.get("Trans_Num") or params.get("AMON_ID") or None
    if not alert.id:
        alert.id = f"{notice_type or 'voevent'}#{alert.event_id or ''}-{params.get('Pkt_Ser_Num', '')}"
    name = _text(_find(root, "Why", "Inference", "Name"))
    alert.event_name = name

    # -- time ------------------------------------------------------------------------------
    iso = _text(_find(root, "WhereWhen", "ISOTime"))
    alert.time = gcn.iso_utc(iso)
    if alert.time is None:
        for tjd, sod in (("Burst_TJD", "Burst_SOD"), ("Event_TJD", "Event_SOD"), ("Trans_TJD", "Trans_SOD")):
            if tjd in params and sod in params:
                alert.time = gcn.tjd_sod_to_iso(params[tjd], params[sod])
                break

    # -- position --------------------------------------------------------------------------
    pos = _find(root, "WhereWhen", "Position2D")
    if pos is not None:
        scale = _ANGLE_UNITS.get((pos.get("unit") or "deg").strip().lower())
        if scale is None:
            raise NoticeError(f"Position2D in unknown unit {pos.get('unit')!r}")
        c1, c2 = _float(_text(_find(pos, "C1"))), _float(_text(_find(pos, "C2")))
        err = _float(_text(_find(pos, "Error2Radius")))
        system_elem = _find(root, "WhereWhen", "AstroCoordSystem")
        system = system_elem.get("id", "") if system_elem is not None else ""
        if c1 is not None and c2 is not None:
            ra, dec = c1 * scale, c2 * scale
            if "GALACTIC" in system.upper() and sky_position(ra, dec) is not None:
                from astropy.coordinates import SkyCoord

                icrs = SkyCoord(l=ra, b=dec, unit="deg", frame="galactic").icrs
                ra, dec = float(icrs.ra.deg), float(icrs.dec.deg)
            err_deg = err * scale if err is not None else None
            alert.stated_error_deg = err_deg
            if ra == 0 and dec == 0 and not err_deg:
                alert.flags.append("no_localization_yet")
            elif set_position(alert, ra, dec):
                if err_deg and err_deg > 0:
                    containment = gcn.voevent_containment(notice_type, alert.mission)
                    sys_deg = _systematic(params, units)
                    try:
                        if sys_deg:
                            # add a separately quoted systematic in quadrature (both at the same containment)
                            err_deg = math.hypot(err_deg, sys_deg)
                        alert.region = Circle(alert.ra, alert.dec, min(err_deg, 180.0), containment,
                                              systematic_included=bool(sys_deg) or None)
                    except RegionError as e:
                        alert.flags.append(f"bad_error_region: {e}")

    # -- skymap URLs -----------------------------------------------------------------------
    for key in ("skymap_fits", "HealPix_URL", "LocationMap_URL", "skymap_fits_basic", "joint_skymap_fits"):
        url = params.get(key)
        if url and (key != "LocationMap_URL" or url.lower().endswith((".fit", ".fits", ".fits.gz", ".fit.gz"))):
            alert.skymap_url = url
            break
    joint = params.get("joint_skymap_fits")
    if joint:
        alert.extra["joint_skymap_url"] = joint

    # -- role ------------------------------------------------------------------------------
    role, reason = "observation", None
    if voe_role == "test":
        role, reason = "test", 'VOEvent role="test"'
    for group in groups.values():
        for flag in ("Test_Submission", "Test_Notice", "Test", "InternalTest"):
            if gcn.truthy(group.get(flag, "false")):
                role, reason = "test", f"{flag} flag set"
    if notice_type and ("_TEST" in notice_type or notice_type.startswith("TEST_")):
        role, reason = "test", f"{notice_type} is a test notice type"
    if topic and topic.upper().endswith("_TEST"):
        role, reason = "test", f"test topic {topic}"
    if grace and grace[:1] in ("M", "T"):
        role, reason = ("mock", f"mock superevent {grace}") if grace[0] == "M" else ("test", f"test superevent {grace}")
    if gcn.truthy(params.get("HardwareInj", "0")):
        role, reason = "mock", "hardware injection"
    alert.role, alert.role_reason = role, reason

    # -- retraction ------------------------------------------------------------------------
    retracted = notice_type in gcn.RETRACTION_TYPES or (alert.alert_type or "").lower() == "retraction"
    for group in [params, *groups.values()]:
        if gcn.truthy(group.get("Retraction", "false")):
            retracted = True
    if retracted:
        alert.retraction = True
        alert.retracts = alert.event_id

    # -- classification, flags, significance -----------------------------------------------
    flags = {}
    for group in [params, *groups.values()]:
        flags.update(group)
    if gcn.truthy(flags.get("Def_NOT_a_GRB", "false")):
        # Swift and Fermi withdraw a trigger by re-issuing it with this flag set (the same bit the
        # binary notices call the retraction bit): earlier notices of the event are retracted
        alert.not_astrophysical = "flagged Def_NOT_a_GRB (retraction of an earlier notice)"
        alert.flags.append("def_not_a_grb")
        alert.retraction = True
        alert.retracts = alert.retracts or alert.event_id
    if gcn.truthy(flags.get("StarTrack_Lost_Lock", "false")):
        alert.flags.append("star_tracker_lost_lock")
        alert.not_astrophysical = alert.not_astrophysical or "star tracker lost lock: position unreliable"
    for key, flag in (("Target_in_Flt_Catalog", "known_source"), ("Target_in_Gnd_Catalog", "known_source"),
                      ("Target_in_Blk_Catalog", "blocked_catalog_source"), ("Near_Bright_Star", "near_bright_star")):
        if gcn.truthy(flags.get(key, "false")) and flag not in alert.flags:
            alert.flags.append(flag)
            if flag == "known_source":
                alert.exact_position = f"a catalogued source ({key})"
    if "Most_Likely_Index" in params:
        try:
            idx = int(float(params["Most_Likely_Index"]))
        except ValueError:
            idx = None
        if idx is not None:
            cls = gcn.GBM_CLASSES.get(idx, f"CLASS_{idx}")
            prob = _float(params.get("Most_Likely_Prob"))
            alert.classification[cls] = prob / 100 if prob and prob > 1 else (prob if prob is not None else 1.0)
            sec = params.get("Sec_Most_Likely_Index")
            if sec not in (None, ""):
                try:
                    sec_cls = gcn.GBM_CLASSES.get(int(float(sec)), f"CLASS_{sec}")
                    p2 = _float(params.get("Sec_Most_Likely_Prob"))
                    alert.classification.setdefault(sec_cls, p2 / 100 if p2 and p2 > 1 else (p2 or 0.0))
                except ValueError:
                    pass
            alert.most_likely_class = cls
            if cls != "GRB":
                alert.not_astrophysical = alert.not_astrophysical or f"most likely class is {cls}, not a GRB"
    if grace:
        cls_group = next((g for k, g in groups.items() if k.lower() == "classification"), {})
        cls_map = {k: _float(v) for k, v in cls_group.items() if _float(v) is not None}
        if cls_map:
            alert.classification = cls_map
            best, why = gcn.classify(cls_map, grb_monitor=False)
            alert.most_likely_class = best
            alert.not_astrophysical = alert.not_astrophysical or why
        if params.get("Significant") not in (None, ""):
            alert.significance["significant"] = gcn.truthy(params["Significant"])
    for key, out in (("Rate_Signif", "rate_snr"), ("Image_Signif", "image_snr"), ("Burst_Signif", "snr"),
                     ("Trig_Signif", "snr"), ("Data_Signif", "snr"), ("Det_Signif", "snr"),
                     ("Inten_Sigma", "snr"), ("signalness", "signalness"), ("Signalness", "signalness")):
        v = _float(params.get(key))
        if v is not None and out not in alert.significance:
            alert.significance[out] = v
    if "FAR" in params and _float(params["FAR"]) is not None:
        unit = (units.get("FAR") or "").lower()
        far = _float(params["FAR"])
        if unit in ("hz", "s^-1", "1/s"):
            alert.significance["far_hz"] = far
        elif unit in ("yr^-1", "1/yr", "yr-1", "per year"):
            alert.significance["far_per_year"] = far
        else:
            alert.significance["far"] = far
    return alert


def _systematic(params: dict[str, str], units: dict[str, str]) -> float | None:
    """A separately quoted systematic position error in degrees (Sys_Err, Syst_Error, ...)."""
    for name, value in params.items():
        low = name.lower()
        if low.startswith(("sys_err", "syst_err", "systematic_err", "pos_sys_err", "loc_sys_err")):
            v = _float(value)
            scale = _ANGLE_UNITS.get((units.get(name) or "deg").strip().lower())
            if v is not None and v > 0 and scale is not None:
                return v * scale
    return None
