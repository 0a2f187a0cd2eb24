"""`stdd demo`: the real daemon on a built-in field, start to finish, in a few minutes.

It makes (once, deterministically) a demo data set with the synthetic generator — frames of one
field, its catalogue, a local template library, one broken file and an Einstein Probe alert
whose error circle falls on the field — writes a config that points at them, starts
`stdd run` in a subprocess, drops the alert and then the frames into the watched folder the
way a camera would (temporary name, then rename), and reports what happened to each as it
happens. The daemon's state starts fresh at every run; the data set is kept.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .store import Database, TERMINAL

DEMO_CONFIG = """\
# written by `stdd demo`: the default settings, pointed at the demo data set
offline = true
instruments_dir = "{instruments}"

[paths]
var = "var"
incoming = ["var/incoming"]
work = "var/work"
results = "var/results"
quarantine = "var/quarantine"
database = "var/stdd.sqlite"
cache = "var/cache"
requests = "var/requests"
alert_drop = "var/alerts-incoming"

[watch]
settle_seconds = 1.0

[pool]
workers = {workers}
stage_timeout_seconds = 600

[http]
port = {port}

[pipeline]
instrument = "synth"

[catalog]
source = "local"
files = ["data/catalog.fits"]

[template]
source = "local"
folder = "data/templates"

[site]
name = "Demo site"

[alerts]
enabled = true
[alerts.kafka]
enabled = false

[[alerts.rules]]
missions = ["*"]
roles = ["observation"]
require_visible = false
priority = 50
actions = ["observation_request"]

[alerts.actions.observation_request]
kind = "request_file"
folder = "var/requests"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(folder: Path, workers: int = 0) -> tuple[Path, dict]:
    """Make the data set if missing, reset the daemon's state, write the config. Returns (config, manifest)."""
    from .synth.demo import make_demo

    folder = folder.resolve()
    data = folder / "data"
    if not (data / "demo.json").is_file():
        make_demo(data)
    manifest = json.loads((data / "demo.json").read_text())
    shutil.rmtree(folder / "var", ignore_errors=True)
    instruments = Path(__file__).resolve().parent.parent / "config" / "instruments"
    config = folder / "stdd.toml"
    config.write_text(DEMO_CONFIG.format(instruments=instruments, workers=workers, port=_free_port()))
    return config, manifest


def _drop(src: Path, folder: Path) -> Path:
    """Copy like a camera or rsync: a hidden temporary name, then an atomic rename."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{src.name}.part"
    shutil.copyfile(src, tmp)
    final = folder / src.name
    os.replace(tmp, final)
    return final


def _port(config: Path) -> int:
    import tomllib

    return int(tomllib.loads(config.read_text())["http"]["port"])


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "—"


def run_demo(folder: Path, *, workers: int = 0, timeout: float = 1200.0,
             echo: Callable[[str], None] = print, serve: bool = False) -> int:
    config, manifest = prepare(Path(folder), workers)
    root = config.parent
    frames = manifest["frames"]
    echo(f"demo: {len(frames)} frames of one field, a local catalogue and template library, one alert")
    echo(f"demo: config {config}")
    log_path = root / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "stdd", "--config", str(config), "run"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = _watch(root, manifest, proc, timeout, echo, log_path)
        url = f"http://127.0.0.1:{_port(config)}/ui/"
        if serve and proc.poll() is None:
            echo(f"\ndemo: the web interface is at {url} (log in with the token in "
                 f"{root / 'var' / 'http.token'}); Ctrl-C stops the daemon")
            try:
                proc.wait()
            except KeyboardInterrupt:
                echo("")
        else:
            echo(f"\ndemo: to look at the results in a browser: stdd --config {config} run, then open {url}")
        return rc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        echo(f"demo: daemon stopped (exit {proc.returncode}); its log is {log_path}")


def _watch(root: Path, manifest: dict, proc: subprocess.Popen, timeout: float,
           echo: Callable[[str], None], log_path: Path) -> int:
    data = root / "data"
    db_path = root / "var" / "stdd.sqlite"
    deadline = time.monotonic() + 120
    while not db_path.exists():
        if proc.poll() is not None:
            echo(f"demo: the daemon exited at start (code {proc.returncode}):")
            echo(log_path.read_text()[-3000:])
            return 1
        if time.monotonic() > deadline:
            echo("demo: the daemon did not start within 120 s")
            return 1
        time.sleep(0.2)
    time.sleep(1.0)
    alert = manifest.get("alert") or {}
    if alert.get("file"):
        _drop(data / alert["file"], root / "var" / "alerts-incoming")
        echo(f"demo: alert dropped: {alert['file']}")
        time.sleep(2.0)
    for f in manifest["frames"]:
        _drop(data / f["file"], root / "var" / "incoming")
        echo(f"demo: frame dropped: {Path(f['file']).name} ({f['role']})")

    db = None
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            echo(f"demo: the daemon stopped unexpectedly (code {proc.returncode})")
            break
        if db is None:
            try:
                db = Database(db_path, readonly=True)
            except Exception:
                time.sleep(0.5)
                continue
        rows = db.query("SELECT * FROM frames ORDER BY id")
        for r in rows:
            key = f"{r['state']}:{r['stage']}"
            if seen.get(r["id"]) != key:
                seen[r["id"]] = key
                what = r["state"] + (f" ({r['stage']})" if r["state"] == "running" and r["stage"] else "")
                extra = f": {r['error']}" if r["state"] == "failed" and r["error"] else ""
                echo(f"demo: frame {r['id']} {r['name']}: {what}{extra}")
        if len(rows) >= len(manifest["frames"]) and all(r["state"] in TERMINAL for r in rows):
            break
        time.sleep(1.0)
    else:
        echo(f"demo: not finished after {timeout:.0f} s")
    if db is None:
        return 1
    rows = db.query("SELECT * FROM frames ORDER BY id")
    alerts = db.query("SELECT id, mission, notice_type, decision, ra, dec, error_radius_deg FROM alerts")
    actions = db.query("SELECT alert_id, name, kind, state, error FROM actions")
    db.close()
    _report(rows, alerts, actions, root, echo)
    by_name = {Path(f["file"]).name: f["role"] for f in manifest["frames"]}
    ok = len(rows) == len(manifest["frames"])
    for r in rows:
        expect = "failed" if by_name.get(r["name"]) == "broken" else "done"
        ok = ok and r["state"] == expect
    echo("demo: OK — every frame ended as expected" if ok else "demo: some frames did not end as expected")
    return 0 if ok else 1


def _report(rows, alerts, actions, root: Path, echo) -> None:
    echo("")
    head = ("id", "frame", "state", "filter", "zp", "fwhm\"", "limit", "cands")
    echo(f"{head[0]:>3}  {head[1]:<16} {head[2]:<9} {head[3]:<6} {head[4]:>13} {head[5]:>6} {head[6]:>6} "
         f"{head[7]:>5}  alerts / error")
    for r in rows:
        zp = f"{r['zp']:.3f}±{r['zp_err']:.3f}" if isinstance(r.get("zp"), float) and r.get("zp_err") is not None \
            else "—"
        tail = r["error"] if r["state"] == "failed" else (r.get("alert_ids") or "")
        echo(f"{r['id']:>3}  {r['name']:<16} {r['state']:<9} {r.get('filter') or '—':<6} {zp:>13} "
             f"{_fmt(r.get('fwhm_arcsec'), '.2f'):>6} {_fmt(r.get('mag_limit'), '.2f'):>6} "
             f"{_fmt(r.get('n_candidates'), 'd'):>5}  {tail}")
    for a in alerts:
        echo(f"\nalert {a['id']}: {a['mission']} {a['notice_type']} at ({_fmt(a['ra'], '.4f')}, "
             f"{_fmt(a['dec'], '.4f')}) r90={_fmt(a['error_radius_deg'], '.4f')} deg")
        for act in actions:
            if act["alert_id"] == a["id"]:
                echo(f"  action {act['name']} ({act['kind']}): {act['state']}"
                     + (f" — {act['error']}" if act.get("error") else ""))
    echo(f"\nresults: {root / 'var' / 'results'}")
    requests = sorted((root / "var" / "requests").glob("*.json")) if (root / "var" / "requests").is_dir() else []
    if requests:
        echo(f"observation requests: {', '.join(p.name for p in requests)}")
