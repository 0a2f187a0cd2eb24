"""`db_size_week_mb`: the state file after a week at 2,000 frames a night, retention applied.

The week is written through the store's own API, in the order the daemon writes it: per frame
FrameStore.add (the `frame.queued` event), claim_next (`frame.started`), set_dirs, four stage
runs (start_stage_run / end_stage_run with a stage summary of realistic size: inspect's header
facts and footprint, photometry's calibration, and the candidate lists of transients and
subtraction), set_footprint after inspect, finish with the result columns (`frame.done` /
`frame.failed`); 3 % of frames fail at a random stage, 1 % are retried once (requeue). Per day
40 GCN notices through AlertStore (add_message, add_alert, set_message): 34 VOEvents of ~6 kB
and 6 IGWN alerts of ~200 kB (their sky map inside), an `alert.received` event each, and an
action on one in five. The store stamps rows with the wall clock; each simulated night's rows
are then moved to that night's time (one UPDATE per time column), so that retention sees a
week of ages.

After each night the retention job runs as the daemon would (stdd.daemon.jobs.prune_database,
default `[retention]`: events 30 days, stage runs 90, notices 30). The key is the file (database
+ write-ahead log) at the end of the week. Context: the size per table (dbstat), the same week
once aged past every retention (the prune of a whole week's history, timed, with the longest
write transaction and the worst wait of a writer running alongside), what a week leaves for ever
(frame and alert rows), and the steady state the default retention projects to.
"""
from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path

from .common import Context, Value, rnd

KEYS = ("db_size_week_mb",)

STAGES = ("inspect", "photometry", "transients", "subtraction")
DAY = 86400.0
#: the goal: a week of 2,000 frames a night (before anything ages out) stays under this
BOUND_MB = 120.0

#: the time columns of each table, moved to the simulated clock
TIME_COLUMNS = {
    "frames": ("created_at", "queued_at", "started_at", "finished_at", "updated_at", "next_attempt_at", "mtime"),
    "stage_runs": ("started_at", "finished_at"),
    "events": ("time",),
    "alert_messages": ("received_at",),
    "alerts": ("received_at", "live_until"),
    "actions": ("started_at", "finished_at"),
}


def _candidates(rng: random.Random, kind: str, n: int, ra: float, dec: float) -> list[dict]:
    return [{"id": f"{kind}_{k + 1:03d}", "ra": round(ra + rng.uniform(-0.3, 0.3), 7),
             "dec": round(dec + rng.uniform(-0.3, 0.3), 7), "x": round(rng.uniform(0, 4096), 3),
             "y": round(rng.uniform(0, 4096), 3), "mag": round(rng.uniform(15, 21), 4),
             "mag_err": round(rng.uniform(0.01, 0.3), 4), "snr": round(rng.uniform(5, 200), 2),
             "flags": rng.choice((0, 0, 0, 2, 16)), "regions": []} for k in range(n)]


def stage_summaries(rng: random.Random, ra: float, dec: float) -> dict[str, dict]:
    """What each stage's result adds to result.json (the stage run's summary), with realistic
    keys and sizes (compare a real result.json)."""
    fp = [[round(ra + dx, 6), round(dec + dy, 6)] for dx, dy in ((-.4, -.4), (.4, -.4), (.4, .4), (-.4, .4))]
    zp = 25 + rng.gauss(0, 0.1)
    return {
        "inspect": {"filter": "r", "filter_source": "header FILTER", "exptime": 60.0,
                    "time_start": "2026-03-04T23:00:00.000", "time_mid": "2026-03-04T23:00:30.000",
                    "time_source": "DATE-OBS", "gain": 1.2, "gain_source": "profile", "saturation": 60000.0,
                    "saturation_source": "header SATURATE", "width": 4096, "height": 4096, "ra": ra, "dec": dec,
                    "radius_deg": 0.57, "footprint": fp, "pixscale_arcsec": 1.0, "wcs_initial": "header",
                    "masked_fraction": round(rng.uniform(0, 0.02), 5), "n_cosmics_pixels": rng.randint(0, 900),
                    "instrument": "cam", "instrument_profile": "cam", "instrument_profile_source": "header"},
        "photometry": {"fwhm_pixels": round(rng.uniform(2, 4), 3), "fwhm_arcsec": round(rng.uniform(2, 4), 3),
                       "zp": zp, "zp_err": 0.01, "zp_scatter": 0.04, "color_term": rng.gauss(0, 0.05),
                       "color_term_err": 0.01, "color": "g-r", "catalog_band": "r",
                       "catalog": "local:/data/catalogs/ps1_field.fits", "mag_limit": 20.5 + rng.gauss(0, 0.3),
                       "mag_limit_sn": 5.0, "n_objects": rng.randint(800, 4000), "n_stars_calib": rng.randint(100, 900),
                       "wcs_rms_arcsec": round(rng.uniform(0.05, 0.3), 4), "wcs_method": "scamp",
                       "wcs_n_matches": rng.randint(100, 900), "objects_table": "objects.fits",
                       "zeropoint_model": "zeropoint.json", "targets": [], "aperture_pixels": 4.5},
        "transients": {"candidates_simple": _candidates(rng, "simple", rng.randint(0, 8), ra, dec),
                       "candidates_simple_table": "candidates_simple.ecsv"},
        "subtraction": {"candidates_sub": _candidates(rng, "sub", rng.randint(0, 16), ra, dec),
                        "candidates_sub_table": "candidates_sub.ecsv", "template": "local:/data/templates/field.fits",
                        "sub_method": "sfft", "sub_tiles": 4, "targets_sub": [], "diff_noise_ratio": 1.05},
    }


def _night(db, frames, events, alerts_store, night: int, per_night: int, rng: random.Random, notices: int) -> None:
    """One night of frames and a day of notices through the store's API, as the daemon writes them."""
    for i in range(per_night):
        sha = hashlib.sha256(f"bench-size-{night}-{i}".encode()).hexdigest()
        ra, dec = rng.uniform(0, 360), rng.uniform(-30, 80)
        with db.write():  # the daemon commits each call on its own; the rows are the same
            f, _ = frames.add(f"/data/incoming/2026-03-{night + 1:02d}/cam_{i:05d}.fits", sha, 33_560_640,
                              time.time(), priority=0)
            retried = rng.random() < 0.01
            for attempt in range(2 if retried else 1):
                f = frames.claim_next(f"local-{i % 2}")
                frames.set_dirs(f["id"], f"/var/lib/stdd/work/{f['id']}",
                                f"/var/lib/stdd/results/{f['id']}-cam_{i:05d}")
                if attempt == 0 and retried:
                    frames.start_stage_run(f["id"], "inspect", f["attempts"], 20_000 + i)
                    frames.close_open_stage_runs(f["id"], "the frame's process died (signal 9)")
                    frames.requeue(f["id"], "the frame's process died (signal 9)")
                    continue
                summaries = stage_summaries(rng, ra, dec)
                fail_at = rng.choice(STAGES) if rng.random() < 0.03 else None
                result: dict = {}
                for stage in STAGES:
                    run = frames.start_stage_run(f["id"], stage, f["attempts"], 20_000 + i)
                    failed = stage == fail_at
                    frames.end_stage_run(run, "failed" if failed else "done",
                                         error=f"{stage}: bench failure" if failed else None,
                                         summary=summaries[stage], seconds=rng.uniform(1, 20))
                    if failed:
                        break
                    result.update(summaries[stage])
                    if stage == "inspect":
                        frames.set_footprint(f["id"], ra, dec, 0.57, summaries[stage]["footprint"])
                frames.finish(f["id"], "failed" if fail_at else "done",
                              error=f"{fail_at}: bench failure" if fail_at else None, result=result)
    for k in range(notices):
        big = k % 7 == 6  # 6 of 40: IGWN alerts with their sky map
        raw = _notice(rng, night, k, 200_000 if big else 6_000)
        topic = "igwn.gwalert" if big else "gcn.classic.voevent.FERMI_GBM_FLT_POS"
        mid, _ = alerts_store.add_message(raw, topic, 0, night * 1000 + k, received_at=time.time())
        alert_id = f"ivo://bench/{night}/{k}"
        alerts_store.add_alert({
            "id": alert_id, "ivorn": alert_id, "event_id": f"E{night}{k:03d}", "mission": "LVK" if big else "Fermi",
            "notice_type": "gwalert" if big else "GBM_FLT_POS", "role": "observation", "time": "2026-03-04T23:00:00",
            "ra": rng.uniform(0, 360), "dec": rng.uniform(-90, 90), "error_radius_deg": rng.uniform(0.01, 10),
            "region": {"kind": "circle", "ra": 10.0, "dec": 20.0, "radius": 5.0}, "actionable": int(k % 5 == 0),
            "priority": 10, "state": "live", "decision": {"kind": "observe" if k % 5 == 0 else "ignore"},
            "live_until": time.time() + DAY, "received_at": time.time(), "message_id": mid,
            "parsed": {"id": alert_id, "mission": "Fermi", "notice_type": "GBM_FLT_POS", "extra": {"n": k},
                       "flags": [], "classification": None}})
        alerts_store.set_message(mid, "parsed", alert_id)
        events.add("alert.received", f"{alert_id}: Fermi GBM_FLT_POS, observe", alert_id=alert_id,
                   data={"decision": {"kind": "observe"}, "message_id": mid})
        if k % 5 == 0:
            act = alerts_store.claim_action(alert_id, "request", "request", "observe", {"ra": 10.0, "dec": 20.0})
            alerts_store.start_action(act)
            alerts_store.finish_action(act, "done", attempts=1, output="request written")


def _notice(rng: random.Random, night: int, k: int, size: int) -> bytes:
    head = (f'<?xml version="1.0"?><voe:VOEvent ivorn="ivo://bench/{night}/{k}" role="observation">'
            "<What><Param name=\"TrigID\" value=\"123\"/></What>").encode()
    return head + rng.randbytes(max(0, size - len(head)))


def _max_ids(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {t}").fetchone()[0] for t in TIME_COLUMNS}


def _move_to(conn, since: dict[str, int], offset: float) -> None:
    """The rows written after `since` (ids) moved by `offset` seconds: the simulated clock."""
    for table, cols in TIME_COLUMNS.items():
        sets = ", ".join(f"{c} = {c} + ?" for c in cols)
        conn.execute(f"UPDATE {table} SET {sets} WHERE rowid > ?", (*([offset] * len(cols)), since[table]))


def table_bytes(db) -> dict[str, int]:
    """Bytes per table and index (SQLite's dbstat), or {} where it is not compiled in."""
    try:
        return {r["name"]: int(r["b"]) for r in db.query("SELECT name, SUM(pgsize) AS b FROM dbstat GROUP BY name")}
    except Exception:
        return {}


def file_mb(path: Path) -> dict[str, float]:
    main = path.stat().st_size if path.exists() else 0
    wal = Path(str(path) + "-wal")
    w = wal.stat().st_size if wal.exists() else 0
    return {"db_mb": rnd(main / 2**20, 2), "wal_mb": rnd(w / 2**20, 2), "total_mb": rnd((main + w) / 2**20, 2)}


def simulate_week(db_path: Path, per_night: int = 2000, nights: int = 7, notices_per_day: int = 40,
                  seed: int = 11, retention=None, log=lambda m: None) -> dict:
    """Write `nights` nights (ending now) with the retention job run after each; returns the
    sizes and the retention reports."""
    from stdd.config.settings import RetentionSettings
    from stdd.daemon.jobs import prune_database
    from stdd.store import Database, EventLog, FrameStore
    from stdd.store.alerts import AlertStore

    retention = retention or RetentionSettings()
    rng = random.Random(seed)
    db = Database(db_path)
    frames, events, alerts_store = FrameStore(db), EventLog(db), AlertStore(db)
    t_start = time.time()
    fill_s, prunes = 0.0, []
    try:
        for night in range(nights):
            t0 = time.monotonic()
            since = _max_ids(db.conn)
            real = time.time()
            _night(db, frames, events, alerts_store, night, per_night, rng, notices_per_day)
            sim = t_start - (nights - night) * DAY + 0.1 * DAY  # the night's evening, the week ending now
            with db.write() as conn:
                _move_to(conn, since, sim - real)
            fill_s += time.monotonic() - t0
            out = prune_database(db_path, retention, now=sim + 0.6 * DAY)  # the next morning's hourly job
            prunes.append({k: out[k] for k in ("events", "stage_runs", "notices", "pages_freed", "seconds")})
            log(f"[db_size] night {night + 1}/{nights}: {file_mb(db_path)['total_mb']} MB")
        db.truncate_wal()
        return {"fill_seconds": round(fill_s, 1), "end": t_start, "prunes": prunes, "size": file_mb(db_path),
                "tables": table_bytes(db), "rows": {t: db.query_one(f"SELECT COUNT(*) AS n FROM {t}")["n"]
                                                    for t in TIME_COLUMNS}}
    finally:
        db.close()


def age_out(db_path: Path, now: float, retention=None, writer_interval: float = 0.005) -> dict:
    """The retention job once everything but the summaries has aged out, with a writer adding
    events alongside on its own connection (as the daemon would): the prune's time, its longest
    write transaction, the writer's worst wait, and the file after."""
    from stdd.config.settings import RetentionSettings
    from stdd.daemon.jobs import prune_database
    from stdd.store import Database, EventLog

    retention = retention or RetentionSettings()
    stop = threading.Event()
    waits: list[float] = []

    def writer() -> None:
        wdb = Database(db_path, migrate=False)
        try:
            log_ = EventLog(wdb)
            while not stop.is_set():
                t0 = time.perf_counter()
                log_.add("bench.writer", "a write while the prune runs")
                waits.append((time.perf_counter() - t0) * 1000)
                time.sleep(writer_interval)
        finally:
            wdb.close()

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    time.sleep(0.05)
    try:
        out = prune_database(db_path, retention, now=now)
    finally:
        stop.set()
        th.join()
    db = Database(db_path, migrate=False)
    try:
        db.truncate_wal()
        tables = table_bytes(db)
    finally:
        db.close()
    return {"prune": {k: v for k, v in out.items() if k != "cutoffs"}, "writer_writes": len(waits),
            "writer_wait_max_ms": rnd(max(waits), 1) if waits else None, "size": file_mb(db_path), "tables": tables}


def projection(week: dict, aged: dict, retention, per_night: int) -> dict:
    """The steady state of the default retention, from what one week adds to each table."""
    tb, floor = week["tables"], aged["tables"]
    grow = {name: b - floor.get(name, 0) for name, b in tb.items()}  # what ages out, per week

    def part(prefixes):
        return sum(v for k, v in grow.items() if any(k == p or k.startswith(f"idx_{p}") for p in prefixes))

    per_day = {"events": part(("events",)) / 7, "stage_runs": part(("stage_runs",)) / 7,
               "notices": part(("alert_messages",)) / 7}
    kept_per_day = (aged["size"]["db_mb"] * 2**20) / 7
    steady = (per_day["events"] * retention.events_days + per_day["stage_runs"] * retention.stage_runs_days
              + per_day["notices"] * retention.notices_days)
    return {"aging_mb_per_day": {k: rnd(v / 2**20, 2) for k, v in per_day.items()},
            "kept_for_ever_mb_per_day": rnd(kept_per_day / 2**20, 2),
            "steady_state_history_mb": rnd(steady / 2**20, 1),
            "frames_per_night": per_night}


def measure(ctx: Context) -> dict[str, Value]:
    from stdd.config.settings import RetentionSettings

    per_night = int(ctx.params.get("db_size_frames_per_night", 2000))
    nights = int(ctx.params.get("db_size_nights", 7))
    folder = ctx.folder("db_size")
    db_path = folder / "stdd.sqlite"
    retention = RetentionSettings()
    week = simulate_week(db_path, per_night=per_night, nights=nights, retention=retention, log=ctx.log)
    later = week["end"] + (max(retention.events_days, retention.stage_runs_days, retention.notices_days) + 1) * DAY
    aged = age_out(db_path, later, retention)
    proj = projection(week, aged, retention, per_night)
    value = week["size"]["total_mb"]
    v = Value(value, runs=[p for p in week["prunes"]], context={
        "bound_mb": BOUND_MB, "frames_per_night": per_night, "nights": nights,
        "retention": retention.model_dump(), "week": week, "aged": aged, "projection": proj,
    })
    p = aged["prune"]
    v.note = (f"{nights} nights × {per_night} frames, 4 stage runs each, 40 notices a day, default retention "
              f"(nothing is 30 days old yet): {value:.1f} MB; once aged out the prune took {p['seconds']:.1f} s "
              f"(longest write transaction {p['longest_lock_ms']:.0f} ms, a writer alongside waited at most "
              f"{aged['writer_wait_max_ms']} ms) and left {aged['size']['total_mb']:.1f} MB (frame and alert rows); "
              f"steady state ≈ {proj['steady_state_history_mb']:.0f} MB of history + "
              f"{proj['kept_for_ever_mb_per_day']:.2f} MB a day kept for ever")
    return {"db_size_week_mb": v}
