"""What a frame's end adds to the store over time: its measurements (stdd.store.measurements),
its candidates associated across frames (stdd.candidates.history), and the notification of
candidates it confirmed (stdd.delivery). Run by the daemon on its database thread inside the
transaction that records the frame as done (`Daemon.finish_hooks`); `stdd store reindex` runs it
over result folders already there."""
from __future__ import annotations

import logging

from ..candidates.history import CandidateHistory
from .measurements import MeasurementStore, read_objects

log = logging.getLogger("stdd.store")


def record_frame(db, settings, frame: dict, result: dict) -> dict:
    """Write the frame's measurements and candidates; returns {"measurements": n, "confirmed": [...]}."""
    objects = read_objects(frame.get("result_dir"), result, settings.store.objects_min_snr)
    n = MeasurementStore(db).ingest(frame, result, objects)
    confirmed = CandidateHistory(db, settings).ingest(frame, result)
    if confirmed and (settings.delivery.notify or settings.delivery.skyportal.url):
        from ..delivery import notify_confirmed_candidates
        from .outbox import Outbox

        cands = []
        for c in confirmed:
            band = next(iter(c.get("filters") or {}), None)
            last = (c.get("filters") or {}).get(band, {}).get("last") if band else None
            cands.append({"id": f"stdd-cand-{c['id']}", "name": f"stdd-cand-{c['id']}", "ra": c["ra"],
                          "dec": c["dec"], "mag": last, "filter": band, "mjd": c["last_mjd"],
                          "frame_id": frame["id"]})
        notify_confirmed_candidates(Outbox(db), settings, cands, frame_id=frame["id"])
    if confirmed:
        log.info("frame=%d confirmed candidate(s) %s", frame["id"], ", ".join(str(c["id"]) for c in confirmed))
    return {"measurements": n, "confirmed": confirmed}


class StoreRecorder:
    """The daemon's finish hook (attached when `store.enabled`)."""

    def __init__(self, daemon):
        self.d = daemon

    def on_frame_done(self, frame: dict, result: dict) -> None:
        s = self.d.settings
        if s.store.enabled:
            record_frame(self.d.db, s, frame, result)
