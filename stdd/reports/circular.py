"""A draft GCN Circular from a follow-up report, in the community's usual form.

Subject "<event>: <site> optical observations" (with "upper limits" or "candidate counterpart"),
then: who observed what with which telescope, starting when after the trigger; a table of the
frames after T0 (T−T0, filter, exposure, limit or magnitude); for no detection "no new source is
detected ... down to the 5σ limits above", else the new source's position and magnitude; the
photometric calibration. A draft: an observer reads it, adds names, and sends it.
"""
from __future__ import annotations

from .alert_report import fmt_dt


def _event_name(alert: dict) -> str:
    parts = [alert.get("mission") or "", alert.get("instrument") or ""]
    name = " ".join(p for p in parts if p).strip()
    ev = alert.get("event_id")
    return f"{name} {ev}".strip() if ev else (name or str(alert.get("id")))


def circular_text(report: dict) -> str:
    a = report["alert"]
    event = _event_name(a)
    site = report.get("site") or "our telescope"
    rows = [r for r in report["frames"] if r["state"] == "done" and not r["before_trigger"]
            and r["t_minus_t0_s"] is not None]
    cands = report.get("candidates") or []
    detected = [r for r in rows if r["detected"]]
    kind = "optical counterpart candidate" if (detected or cands) else "optical upper limits"
    lines = [f"SUBJECT: {event}: {site} {kind}", "", f"<names> report on behalf of the {site} team:", ""]
    if not rows:
        lines.append(f"The field of {event} (trigger at {report.get('t0')} UT) has not been observed after the "
                     "trigger yet.")
        return "\n".join(lines) + "\n"
    first = rows[0]
    pos = (f" (RA, Dec = {a['ra']:.4f}, {a['dec']:+.4f} deg, error radius {a['error_radius_deg'] * 60:.1f} arcmin)"
           if a.get("ra") is not None and a.get("dec") is not None and a.get("error_radius_deg") else "")
    lines.append(f"We observed the field of {event}{pos} with the {site} telescope starting at "
                 f"{first['time_mid']} UT, {fmt_dt(first['t_minus_t0_s'])} after the trigger "
                 f"({report.get('t0')} UT). We obtained {len(rows)} frame(s) in the "
                 f"{', '.join(sorted({r['filter'] or '?' for r in rows}))} filter(s).")
    lines += ["", f"{'T-T0':>10} {'filter':>6} {'exp (s)':>8} {'mag / 5-sigma limit':>22}"]
    for r in rows:
        if r["detected"]:
            val = f"{r['mag']:.2f} +/- {(r['mag_err'] or 0):.2f}"
        elif r["limit"] is not None:
            val = f"> {r['limit']:.2f}"
        else:
            val = "-"
        exp = f"{r['exptime']:.0f}" if r.get("exptime") else "-"
        lines.append(f"{fmt_dt(r['t_minus_t0_s']):>10} {(r['filter'] or '?'):>6} {exp:>8} {val:>22}")
    lines.append("")
    if detected:
        best = max(detected, key=lambda r: r["snr"] or 0)
        lines.append(f"A source is detected at the alert position with {best['filter']} = {best['mag']:.2f} +/- "
                     f"{(best['mag_err'] or 0):.2f} at T-T0 = {fmt_dt(best['t_minus_t0_s'])}.")
    if cands:
        c = cands[0]
        lines.append(f"Within the error region we find a new source at RA, Dec = {c['ra']:.5f}, {c['dec']:+.5f} "
                     f"(J2000) with magnitude {c['mag']:.2f} +/- {(c['mag_err'] or 0):.2f} (S/N {c['snr']:.1f}), "
                     f"absent from the template/catalogue" + (f"; {len(cands) - 1} other candidate(s) are being "
                                                               "examined." if len(cands) > 1 else "."))
    if not detected and cands:
        lines.append("At the alert position itself no source is detected down to the limits above.")
    if not detected and not cands:
        deepest = report["summary"].get("deepest_limit")
        lines.append("No new source is detected within the error region down to the 5-sigma limiting "
                     "magnitudes listed above" + (f" (deepest {deepest:.2f})." if deepest is not None else "."))
    lines += ["", "The photometry is calibrated against field stars of the reference catalogue; magnitudes are "
                  "not corrected for Galactic extinction.", ""]
    return "\n".join(lines)
