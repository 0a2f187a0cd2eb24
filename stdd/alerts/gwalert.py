"""LVK alerts on igwn.gwalert (JSON; the only LVK stream since 2026-07-08).

The localisation is `event.skymap`, a base64 multi-order HEALPix FITS (UNIQ, PROBDENSITY);
when an external coincidence carries a decodable `combined_skymap` (GW + GRB), that one is
used, as it is the sharper of the two. Superevent ids starting with M are mock (MDC)
events, with T test events; a RETRACTION has `event: null` and retracts the superevent.
"""
from __future__ import annotations

from . import gcn
from .notice import Alert, NoticeError
from .region import RegionError, Skymap


def parse_gwalert(data: dict, raw: bytes, topic: str | None = None) -> Alert:
    superevent = data.get("superevent_id")
    if not superevent or not isinstance(superevent, str):
        raise NoticeError("igwn.gwalert without a superevent_id")
    alert_type = str(data.get("alert_type") or "").upper() or None
    created = gcn.iso_utc(data.get("time_created"))
    alert = Alert(id=f"{superevent}-{(alert_type or 'alert').lower()}-{data.get('time_created') or ''}",
                  mission="LVK", notice_type=alert_type, alert_type=alert_type, format="gwalert",
                  topic=topic, event_id=superevent, event_name=superevent, created=created)
    urls = data.get("urls") or {}
    if isinstance(urls, dict) and urls.get("gracedb"):
        alert.extra["gracedb"] = urls["gracedb"]

    if superevent.startswith("M"):
        alert.role, alert.role_reason = "mock", f"mock superevent {superevent}"
    elif superevent.startswith("T"):
        alert.role, alert.role_reason = "test", f"test superevent {superevent}"

    if alert_type == "RETRACTION":
        alert.retraction = True
        alert.retracts = superevent
        alert.time = None
        return alert

    event = data.get("event")
    if not isinstance(event, dict):
        alert.flags.append("no_event")
        return alert
    alert.time = gcn.iso_utc(event.get("time"))
    instruments = event.get("instruments")
    if isinstance(instruments, list):
        alert.instrument = ",".join(map(str, instruments))
    search = str(event.get("search") or "")
    if search.upper() == "MDC" and alert.role == "observation":
        alert.role, alert.role_reason = "mock", "mock data challenge (search MDC)"
    for key in ("group", "pipeline", "search", "properties", "duration", "central_frequency"):
        if event.get(key) is not None:
            alert.extra[key] = event[key]
    if event.get("far") is not None:
        alert.significance["far_hz"] = event["far"]
    if event.get("significant") is not None:
        alert.significance["significant"] = bool(event["significant"])
        if not event["significant"]:
            alert.flags.append("low_significance")
    classification = event.get("classification")
    if isinstance(classification, dict) and classification:
        alert.classification = {str(k): float(v) for k, v in classification.items()
                                if isinstance(v, (int, float))}
        alert.most_likely_class, alert.not_astrophysical = gcn.classify(alert.classification, grb_monitor=False)

    skymap_text = event.get("skymap")
    ext = data.get("external_coinc")
    if isinstance(ext, dict):
        alert.extra["external_coinc"] = {k: v for k, v in ext.items() if k != "combined_skymap"}
        if ext.get("combined_skymap"):
            try:
                alert.skymap = Skymap.from_base64(ext["combined_skymap"])
                alert.extra["skymap_source"] = "external_coinc.combined_skymap"
            except RegionError as e:
                alert.extra["combined_skymap_error"] = str(e)
    if alert.skymap is None and skymap_text:
        try:
            alert.skymap = Skymap.from_base64(skymap_text)
            alert.extra["skymap_source"] = "event.skymap"
        except RegionError as e:
            alert.skymap_error = f"event.skymap: {e}"
    elif alert.skymap is None:
        alert.skymap_error = "no skymap in the alert"
    return alert
