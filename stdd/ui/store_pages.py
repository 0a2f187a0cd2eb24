"""The web interface's pages over the measurement store: the vetting queue (/ui/candidates, marks
and the labelled-set export) and light curves (/ui/lightcurve: by position or target name, plot,
table, downloads). Reads in the endpoint's reader threads; a vetting mark is written through the
daemon's database thread (never on the event loop)."""
from __future__ import annotations

import csv
import io
import json
import urllib.parse

import aiohttp_jinja2
from aiohttp import web

from ..candidates.history import STATES, CandidateHistory
from ..candidates.vetting import MARKS, Vetting
from ..http.appkeys import KEY_DAEMON, KEY_READS
from ..lightcurves.query import as_ecsv, lightcurve, plot_png
from . import security

QUEUE_SIZE = 30


def add_routes(app: web.Application, render, require_read, lenient) -> None:
    async def page_candidates(request: web.Request) -> web.Response:
        require_read(request)
        order = request.query.get("order", "newest")
        state = request.query.get("state") or None
        if order not in ("newest", "best") or (state is not None and state not in STATES):
            raise web.HTTPBadRequest(text=f"order is newest or best; state one of {', '.join(STATES)}")
        reads = request.app[KEY_READS]
        settings = request.app[KEY_DAEMON].settings

        def gather():
            db = reads.db()
            hist, vet = CandidateHistory(db, settings), Vetting(db)
            if state:
                ids = [c["id"] for c in hist.list(state, QUEUE_SIZE)]
            else:
                ids = vet.unvetted(order, QUEUE_SIZE)
            rows = []
            marks = vet.marks_of(ids)
            for cid in ids:
                c = hist.get(cid)
                if c is None:
                    continue
                c["detections"] = hist.detections(cid)
                latest = c["detections"][-1] if c["detections"] else None
                c["latest"] = latest
                c["mark"] = marks.get(cid)
                if latest and latest.get("cutout"):
                    c["cutout_fits"] = latest["cutout"].rsplit(".", 1)[0] + ".fits"
                rows.append(c)
            counts = {r["state"]: r["n"] for r in db.query("SELECT state, COUNT(*) AS n FROM candidates GROUP BY state")}
            vetted = db.query_one("SELECT COUNT(*) AS n FROM vetting")["n"]
            return rows, counts, vetted

        rows, counts, vetted = await reads.run(gather)
        return aiohttp_jinja2.render_template("candidates.html", request, {
            "rows": lenient(rows), "counts": counts, "vetted": vetted, "order": order, "state": state,
            "marks": MARKS, "states": STATES, "message": request.query.get("message")})

    async def post_vet(request: web.Request) -> web.Response:
        form = await request.post()
        session = security.check_action(request, form)
        mark = str(form.get("mark") or "")
        if mark not in MARKS:
            raise web.HTTPBadRequest(text=f"mark must be one of {', '.join(MARKS)}")
        cid = int(request.match_info["id"])
        daemon = request.app[KEY_DAEMON]

        def write():
            with daemon.db.write():
                return Vetting(daemon.db).mark(cid, mark, session.who, str(form.get("note") or "") or None)

        try:
            await daemon.gate.run(write)
        except LookupError as e:
            raise web.HTTPNotFound(text=str(e))
        back = security.safe_next(str(form.get("next") or "/ui/candidates"))
        sep = "&" if "?" in back else "?"
        raise web.HTTPSeeOther(back + sep + "message=" + urllib.parse.quote(f"candidate {cid} marked {mark}"))

    async def export(request: web.Request) -> web.Response:
        require_read(request)
        reads = request.app[KEY_READS]
        rows = await reads.run(lambda: Vetting(reads.db()).export())
        if request.match_info["fmt"] == "json":
            return web.json_response(rows, dumps=lambda o: json.dumps(o, default=str))
        buf = io.StringIO()
        cols = list(rows[0]) if rows else ["candidate_id", "frame_id", "cand_key", "mark", "who", "at"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        return web.Response(text=buf.getvalue(), content_type="text/csv",
                            headers={"Content-Disposition": "attachment; filename=vetting.csv"})

    def lc_params(request: web.Request) -> dict:
        q = request.query
        try:
            out = {"ra": float(q["ra"]), "dec": float(q["dec"]), "radius": float(q.get("radius", 2.0)),
                   "forced": q.get("forced") in ("1", "true", "on"), "band": q.get("filter") or None}
        except (KeyError, ValueError):
            raise web.HTTPBadRequest(text="ra and dec (degrees) are needed, as numbers")
        if not (0 <= out["ra"] < 360 and -90 <= out["dec"] <= 90 and 0 < out["radius"] <= 300):
            raise web.HTTPBadRequest(text="ra in [0, 360), dec in [-90, 90], radius in (0, 300] arcsec")
        return out

    async def page_lightcurve(request: web.Request) -> web.Response:
        require_read(request)
        reads = request.app[KEY_READS]
        settings = request.app[KEY_DAEMON].settings
        name = (request.query.get("name") or "").strip()
        note = None
        q = dict(request.query)
        if name and "ra" not in q:
            pos = await reads.run(lambda: _position_of(reads.db(), name, settings))
            if pos is None:
                note = f"{name!r} is neither a target measured here nor a name that resolves (offline: only names " \
                       f"resolved before are known)"
            else:
                q.update(ra=str(pos[0]), dec=str(pos[1]))
                raise web.HTTPSeeOther("/ui/lightcurve?" + urllib.parse.urlencode(q))
        targets = await reads.run(lambda: reads.db().query(
            "SELECT name, AVG(ra) AS ra, AVG(dec) AS dec, COUNT(*) AS n FROM measurements WHERE kind = 'target'"
            " GROUP BY name ORDER BY MAX(mjd) DESC LIMIT 50"))
        lc = None
        if "ra" in q:
            p = lc_params(request)
            lc = await reads.run(lambda: lightcurve(reads.db(), p["ra"], p["dec"], p["radius"], forced=p["forced"],
                                                    band=p["band"], sn=settings.pipeline.sn))
        qs = urllib.parse.urlencode({k: v for k, v in request.query.items() if k != "name"})
        return aiohttp_jinja2.render_template("lightcurve.html", request, {
            "lc": lenient(lc) if lc else None, "qs": qs, "targets": targets, "note": note, "name": name,
            "q": request.query})

    async def lightcurve_png(request: web.Request) -> web.Response:
        require_read(request)
        p = lc_params(request)
        reads = request.app[KEY_READS]
        sn = request.app[KEY_DAEMON].settings.pipeline.sn
        lc = await reads.run(lambda: lightcurve(reads.db(), p["ra"], p["dec"], p["radius"], forced=p["forced"],
                                                band=p["band"], sn=sn))
        png = await render(request, plot_png, lc)
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-cache"})

    async def lightcurve_ecsv(request: web.Request) -> web.Response:
        require_read(request)
        p = lc_params(request)
        reads = request.app[KEY_READS]
        lc = await reads.run(lambda: lightcurve(reads.db(), p["ra"], p["dec"], p["radius"], forced=p["forced"],
                                                band=p["band"]))
        return web.Response(text=as_ecsv(lc), content_type="text/plain",
                            headers={"Content-Disposition": "attachment; filename=lightcurve.ecsv"})

    r = app.router
    r.add_get("/ui/candidates", page_candidates)
    r.add_post(r"/ui/candidates/{id:\d+}/vet", post_vet)
    r.add_get(r"/ui/candidates/export.{fmt:(json|csv)}", export)
    r.add_get("/ui/lightcurve", page_lightcurve)
    r.add_get("/ui/lightcurve.png", lightcurve_png)
    r.add_get("/ui/lightcurve.ecsv", lightcurve_ecsv)


def _position_of(db, name: str, settings) -> tuple[float, float] | None:
    row = db.query_one("SELECT AVG(ra) AS ra, AVG(dec) AS dec FROM measurements WHERE kind = 'target' AND name = ?",
                       (name,))
    if row and row["ra"] is not None:
        return row["ra"], row["dec"]
    from ..sources.names import resolve

    try:
        res = resolve(name, settings.catalog, offline=settings.offline, cache_dir=settings.paths.cache, timeout=10)
    except Exception:
        return None
    return (res.ra, res.dec) if getattr(res, "ra", None) is not None else None
