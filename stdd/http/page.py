"""The HTML status page at `/`: queue, workers, recent frames, live alerts.

Design note: the page is rendered on the server as plain HTML (every value escaped), so it is
complete without JavaScript, in a text browser, or in `chromium --dump-dom`. A few lines of
script re-fetch the page every few seconds and swap the `#live` section, which keeps it live
without a second set of JSON-to-HTML code. A frame's thumbnail is the first image its stages
published (preferring one named like a preview), served through /frames/{id}/files/.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from ..pipeline import RESULT_FILE
from ..store import Database, FrameStore
from ..store.stats import Stats

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
PREFERRED = ("thumb", "preview", "image", "frame")
REFRESH_SECONDS = 5


def thumbnail(frame: dict) -> str | None:
    """The relative name of the frame's preview image, or None."""
    for folder in (frame.get("result_dir"), frame.get("work_dir")):
        if not folder:
            continue
        base = Path(folder)
        try:
            products = json.loads((base / RESULT_FILE).read_text()).get("products") or []
        except (OSError, ValueError, AttributeError):
            products = []
        images = [p for p in products if isinstance(p, str) and p.lower().endswith(IMAGE_SUFFIXES)]
        if not images and base.is_dir():
            images = sorted(p.name for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images = [p for p in images if (base / p).is_file()]
        if images:
            for word in PREFERRED:
                for p in images:
                    if word in Path(p).name.lower():
                        return p
            return images[0]
    return None


def gather(db_factory: Callable[[], Database], limit: int = 20,
           alerts: Callable[[Database], list[dict]] | None = None) -> dict[str, Any]:
    """Everything the page shows that lives in the database or on disk (run in a reader thread)."""
    db = db_factory()
    frames = FrameStore(db)
    recent = frames.list(limit=limit)
    for f in recent:
        f["thumbnail"] = thumbnail(f)
    return {
        "counts": frames.counts(),
        "queue_due": Stats(db).queue_due(time.time()),
        "frames": recent,
        "alerts": alerts(db) if alerts else [],
    }


# -- rendering ----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, fmt: str) -> str:
    if value is None or isinstance(value, (str, bytes)):
        return "—"
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "—"


def _time(ts: Any) -> str:
    if not ts:
        return "—"
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "—"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff} td,th{padding:.25em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:middle} th{background:#eee} td.n{text-align:right;font-variant-numeric:tabular-nums}
.state-done{color:#176b1e}.state-failed{color:#b00020}.state-running{color:#0b5cad}.state-cancelled{color:#777}
.badge{display:inline-block;padding:.1em .5em;border-radius:.3em;background:#eee;margin-right:.4em}
.paused{background:#ffd54f} img.thumb{width:64px;height:64px;object-fit:cover;background:#000}
.muted{color:#777}
"""

SCRIPT = """
(function(){
  function markImages(root){
    root.querySelectorAll('img.thumb').forEach(function(img){
      function ok(){ if(img.naturalWidth > 0) img.setAttribute('data-loaded', '1'); }
      if(img.complete) ok(); else img.addEventListener('load', ok);
    });
  }
  markImages(document);
  async function refresh(){
    try{
      const r = await fetch(location.pathname, {cache:'no-store'});
      if(!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
      const fresh = doc.getElementById('live');
      if(fresh){ document.getElementById('live').replaceWith(fresh); markImages(fresh); }
    }catch(e){}
  }
  setInterval(refresh, %d);
})();
""" % (REFRESH_SECONDS * 1000)


def render(data: dict[str, Any]) -> str:
    snap = data.get("snapshot") or {}
    counts = data.get("counts") or {}
    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>")
    add("<meta name='viewport' content='width=device-width,initial-scale=1'>")
    add(f"<title>stdd {_e(snap.get('version'))}</title><style>{CSS}</style></head><body>")
    add(f"<h1>stdd <span class='muted'>{_e(snap.get('version'))}</span></h1>")
    add("<main id='live'>")
    add("<p>")
    add(f"<span class='badge' id='uptime'>up {_duration(snap.get('uptime_seconds'))}</span>")
    if snap.get("paused"):
        add("<span class='badge paused' id='paused'>paused</span>")
    add(f"<span class='badge'>updated {_time(time.time())} UTC</span></p>")

    add("<h2>Queue</h2><table id='queue'><tr>")
    for state in counts:
        add(f"<th>{_e(state)}</th>")
    add("<th>due now</th></tr><tr>")
    for state, n in counts.items():
        add(f"<td class='n' data-state='{_e(state)}'>{_e(n)}</td>")
    add(f"<td class='n'>{_e(data.get('queue_due'))}</td></tr></table>")

    add("<h2>Workers</h2>")
    workers = snap.get("workers") or []
    if workers:
        add("<table id='workers'><tr><th>worker</th><th>pid</th><th>alive</th><th>frame</th><th>stage</th>"
            "<th>since</th></tr>")
        for w in workers:
            fid = w.get("frame_id")
            frame = f"<a href='/frames/{_e(fid)}'>{_e(fid)}</a>" if fid is not None else "idle"
            add(f"<tr><td>{_e(w.get('name'))}</td><td class='n'>{_e(w.get('pid'))}</td>"
                f"<td>{'yes' if w.get('alive', True) else 'NO'}</td><td>{frame}</td>"
                f"<td>{_e(w.get('stage') or '')}</td><td>{_time(w.get('since'))}</td></tr>")
        add("</table>")
    else:
        add("<p class='muted' id='workers'>no workers</p>")

    add("<h2>Recent frames</h2>")
    frames = data.get("frames") or []
    if frames:
        add("<table id='frames'><tr><th></th><th>id</th><th>file</th><th>state</th><th>filter</th>"
            "<th>zero point</th><th>FWHM ″</th><th>limit</th><th>candidates</th><th>updated (UTC)</th></tr>")
        for f in frames:
            fid = f.get("id")
            img = (f"<img class='thumb' alt='' loading='lazy' src='/frames/{_e(fid)}/thumbnail.png'>"
                   if f.get("thumbnail") or f.get("work_dir") or f.get("result_dir") else "")
            state = f.get("state") or ""
            shown = state + (f" ({f.get('stage')})" if state == "running" and f.get("stage") else "")
            err = f" title='{_e(f.get('error'))}'" if f.get("error") else ""
            add(f"<tr class='frame' data-id='{_e(fid)}' data-sha256='{_e(f.get('sha256'))}'>"
                f"<td>{img}</td><td class='n'><a href='/frames/{_e(fid)}'>{_e(fid)}</a></td>"
                f"<td class='name'>{_e(f.get('name') or f.get('path'))}</td>"
                f"<td class='state-{_e(state)}'{err}>{_e(shown)}</td><td>{_e(f.get('filter') or '—')}</td>"
                f"<td class='n'>{_num(f.get('zp'), '.3f')}</td><td class='n'>{_num(f.get('fwhm_arcsec'), '.2f')}</td>"
                f"<td class='n'>{_num(f.get('mag_limit'), '.2f')}</td>"
                f"<td class='n'>{_e(f.get('n_candidates') if f.get('n_candidates') is not None else '—')}</td>"
                f"<td>{_time(f.get('updated_at'))}</td></tr>")
        add("</table>")
    else:
        add("<p class='muted' id='frames'>no frames yet</p>")

    add("<h2>Live alerts</h2>")
    alerts = data.get("alerts") or []
    if alerts:
        add("<table id='alerts'><tr><th>alert</th><th>mission</th><th>type</th><th>time</th><th>RA</th>"
            "<th>Dec</th><th>radius °</th><th>decision</th></tr>")
        for a in alerts:
            href = "/alerts/" + urllib.parse.quote(str(a.get("id")), safe="")
            add(f"<tr class='alert' data-id='{_e(a.get('id'))}'><td><a href='{_e(href)}'>"
                f"{_e(a.get('event_id') or a.get('id'))}</a></td><td>{_e(a.get('mission'))}</td>"
                f"<td>{_e(a.get('notice_type'))}</td><td>{_e(a.get('time'))}</td>"
                f"<td class='n'>{_num(a.get('ra'), '.4f')}</td><td class='n'>{_num(a.get('dec'), '.4f')}</td>"
                f"<td class='n'>{_num(a.get('error_radius_deg'), '.3f')}</td>"
                f"<td>{_e(a.get('decision') or a.get('ignore_reason') or '')}</td></tr>")
        add("</table>")
    else:
        add("<p class='muted' id='alerts'>no live alerts</p>")
    add("</main>")
    add("<p class='muted'><a href='/status'>status</a> · <a href='/frames'>frames</a> · "
        "<a href='/alerts'>alerts</a> · <a href='/health'>health</a> · <a href='/metrics'>metrics</a> · "
        "<a href='/openapi.json'>API</a></p>")
    add(f"<script>{SCRIPT}</script></body></html>")
    return "".join(parts)
