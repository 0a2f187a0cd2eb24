"""What goes into the outbox, and when: called inside the transaction of the causing event.

- `enqueue_frame`: a frame is done → its targets' photometry to SkyPortal and the TOM (and,
  with `skyportal.candidates = "all"`, its difference-image candidates with their cutouts);
- `notify`: one notification to every channel that listens to the event;
- `notify_confirmed_candidates`: the public entry for the candidate store: new confirmed
  candidates to the channels and (`skyportal.candidates = "confirmed"`, the default) to SkyPortal.

Payloads hold measured values, not references to rows, so an item can be sent after the frame's
row has changed; files (cutouts) are named by path and read at send time (gone → sent without).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Iterable

from ..store import Outbox

MJD_EPOCH = _dt.datetime(1858, 11, 17, tzinfo=_dt.timezone.utc)


def mjd_of(iso: str | None) -> float | None:
    """MJD (UTC) of an ISO time string, or None."""
    if not iso:
        return None
    try:
        t = _dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00").replace("T", " "))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return round((t - MJD_EPOCH).total_seconds() / 86400.0, 8)


def _num(v):
    return v if isinstance(v, (int, float)) and v == v else None


def frame_items(settings, frame: dict, result: dict) -> list[tuple[str, str, str, dict]]:
    """(target, kind, key, payload) of a done frame's deliveries (pure: no database)."""
    d = settings.delivery
    mjd = mjd_of(result.get("time_mid") or frame.get("time_mid"))
    band = result.get("filter") or frame.get("filter")
    if mjd is None or not band:
        return []
    frame_key = frame.get("sha256") or str(frame.get("id"))
    base = {"mjd": mjd, "filter": band, "frame_id": frame.get("id"), "frame": frame.get("name"),
            "frame_limit": _num(result.get("mag_limit"))}
    items = []
    for t in result.get("targets") or []:
        if not t.get("inside") or t.get("name") is None:
            continue
        payload = dict(base, name=str(t["name"]), ra=t["ra"], dec=t["dec"], mag=_num(t.get("mag")),
                       magerr=_num(t.get("mag_err")), limiting_mag=_num(t.get("mag_limit")) or base["frame_limit"])
        if payload["limiting_mag"] is None:
            continue
        key = f"phot:{frame_key}:{t['name']}"
        if d.skyportal.url:
            items.append(("skyportal", "photometry", key, payload))
        if d.tom.url:
            items.append(("tom", "photometry", key, payload))
    if d.skyportal.url and d.skyportal.candidates == "all":
        result_dir = frame.get("result_dir")
        for c in result.get("candidates_sub") or []:
            cutout = str(Path(result_dir) / c["cutout"]) if result_dir and c.get("cutout") else None
            payload = candidate_payload(dict(c, cutout=cutout), base)
            if payload is not None:
                items.append(("skyportal", "candidate", f"cand:{frame_key}:{c.get('id')}", payload))
    return items


def candidate_payload(c: dict, base: dict | None = None) -> dict | None:
    """What SkyPortal gets for one candidate (None when it lacks a position, magnitude, time or band).
    `base`: the frame's `mjd`, `filter`, `frame_id`, `frame`, `frame_limit`, else taken from `c`."""
    base = base or {"mjd": _num(c.get("mjd")) or mjd_of(c.get("time_mid") or c.get("time")),
                    "filter": c.get("filter"), "frame_id": c.get("frame_id"), "frame": c.get("frame"),
                    "frame_limit": _num(c.get("limiting_mag"))}
    if c.get("ra") is None or c.get("dec") is None or _num(c.get("mag")) is None:
        return None
    if base.get("mjd") is None or not base.get("filter"):
        return None
    return dict(base, candidate=c.get("id") or c.get("name"), ra=float(c["ra"]), dec=float(c["dec"]),
                mag=_num(c.get("mag")), magerr=_num(c.get("mag_err")) or 0.0,
                limiting_mag=base.get("frame_limit") or _num(c.get("mag")), cutout=c.get("cutout"),
                regions=c.get("regions") or [])


def enqueue_frame(outbox: Outbox, settings, frame: dict, result: dict) -> int:
    """A done frame's deliveries into the outbox (inside the frame's end transaction); how many."""
    n = 0
    for target, kind, key, payload in frame_items(settings, frame, result):
        if outbox.enqueue(target, kind, key, payload, frame_id=frame.get("id")) is not None:
            n += 1
    return n


def notify(outbox: Outbox, settings, event: str, title: str, body: str, key: str, *,
           frame_id: int | None = None, alert_id: str | None = None, data: dict | None = None) -> int:
    """One notification to every channel listening to `event` (candidates, alert_acted,
    daemon_trouble); `key` makes it once only per channel. Returns how many were queued."""
    n = 0
    for name, channel in settings.delivery.notify.items():
        if event not in channel.events or not channel.urls:
            continue
        payload = {"event": event, "title": title, "body": body, "data": data or {}}
        if outbox.enqueue(f"notify:{name}", event, key, payload, frame_id=frame_id, alert_id=alert_id) is not None:
            n += 1
    return n


def notify_confirmed_candidates(outbox: Outbox, settings, candidates: Iterable[dict], *,
                                frame_id: int | None = None, alert_id: str | None = None) -> int:
    """New confirmed candidates: tell the channels (one message for the set) and, with
    `[delivery.skyportal] candidates = "confirmed"`, post each to SkyPortal with its cutout. Each
    candidate is a dict with at least `ra`, `dec` and an `id` or `name`; for SkyPortal also `mag`,
    `filter`, `mjd` (or `time_mid`), optional `mag_err`, `limiting_mag`, `cutout` (a PNG path),
    `frame`, `frame_id`. Call it in the transaction that confirms them; the same candidate is
    posted once, the same set told once. Returns the number of items queued."""
    cands = list(candidates)
    if not cands:
        return 0
    queued = 0
    sp = settings.delivery.skyportal
    if sp.url and sp.candidates == "confirmed":
        for c in cands:
            payload = candidate_payload(c)
            if payload is None:
                continue
            key = f"confirmed:{c.get('name') or c.get('id')}:{payload['ra']:.6f}:{payload['dec']:.6f}"
            if outbox.enqueue("skyportal", "candidate", key, payload, frame_id=frame_id or c.get("frame_id"),
                              alert_id=alert_id) is not None:
                queued += 1
    lines = []
    for c in cands:
        name = c.get("name") or c.get("id")
        mag = f" mag {c['mag']:.2f}" if _num(c.get("mag")) is not None else ""
        band = f" ({c['filter']})" if c.get("filter") else ""
        where = f" in {c['frame']}" if c.get("frame") else ""
        lines.append(f"{name}: RA {float(c['ra']):.5f} Dec {float(c['dec']):+.5f}{mag}{band}{where}")
    ids = sorted(str(c.get("name") or c.get("id") or f"{c['ra']:.5f},{c['dec']:.5f}") for c in cands)
    key = "cands:" + hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:24]
    title = f"stdd: {len(cands)} new confirmed candidate{'s' * (len(cands) > 1)}"
    return queued + notify(outbox, settings, "candidates", title, "\n".join(lines), key, frame_id=frame_id,
                           alert_id=alert_id, data={"candidates": cands})
