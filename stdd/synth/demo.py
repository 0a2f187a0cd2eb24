"""The demo data set: one field seen on a few nights, a local template library, a GCN alert and a broken file.

Layout written by :func:`make_demo` into ``folder``::

    catalog.fits                 reference catalogue of the field (Vizier-style columns, see stdd.synth.starfield)
    templates/tmpl_<object>_<band>.fits        the field's template (covers every frame)
    templates/tmpl_<object>-N1_<band>.fits     a neighbouring field overlapping ~40 % of the frame
    templates/tmpl_<object>-N2_<band>.fits     a field far away (no overlap)
    frames/frame_NN.fits         n_frames frames of the field (dithered by a few px, varying seeing/sky/zp)
    truth/frame_NN.json          the truth of each frame (see stdd.synth.field)
    alerts/ep_wxt_alert_demo.json  an Einstein Probe WXT alert (gcn.notices.einstein_probe.wxt.alert JSON)
    demo.json                    manifest: which frame is which, the alert, the templates

The story: frames 1…n−2 are reference nights before the alert (frame 2 has a mount-derived WCS a few
arcsec off, to exercise astrometric refinement); the EP alert arrives on the last night; frame n−1, taken
20 minutes after the trigger, carries two new point sources, the alert's error circle (0.02° or less,
fully on the frame) around the brighter one; the last frame is truncated mid-data (the failure path).
Everything is deterministic for a given seed.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .field import default_starfield, make_field, make_template_library

EP_WXT_SCHEMA = "https://gcn.nasa.gov/schema/main/gcn/notices/einstein_probe/wxt/alert.schema.json"
DEMO_RA, DEMO_DEC = 210.0, 35.0
DEMO_OBJECT = "SYNTH-DEMO"


@dataclass
class DemoProducts:
    folder: Path
    manifest: Path
    catalog: Path
    templates: list[Path]
    frames: list[Path]  # all frames, including the broken one
    truths: list[Path]
    transient_frame: Path
    broken_frame: Path
    alert: Path


def make_demo(folder: str | os.PathLike, n_frames: int = 4, seed: int = 2026, size: int = 1024,
              band: str = "r") -> DemoProducts:
    """Write the demo data set into ``folder`` (see the module docstring). ``n_frames`` ≥ 3."""
    if not isinstance(n_frames, int) or n_frames < 3:
        raise ValueError(f"n_frames must be an integer >= 3 (clean, transient and broken frames), got {n_frames!r}")
    if not isinstance(size, int) or not 256 <= size <= 4096:
        raise ValueError(f"size must be an integer in 256..4096, got {size!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    starfield = default_starfield(seed, width=size, height=size)
    rng = np.random.default_rng([seed, 99])

    alert_night = datetime(2026, 3, 1, 2, 40, 12)
    i_trans, i_broken = n_frames - 2, n_frames - 1
    frames, truths, entries = [], [], []
    trans_truth: dict[str, Any] | None = None
    for k in range(n_frames):
        name = f"frame_{k + 1:02d}"
        if k < i_trans:
            start = alert_night - timedelta(days=i_trans - k) + timedelta(minutes=20 + 7 * k)
            role = "reference"
        elif k == i_trans:
            start = alert_night + timedelta(minutes=20)
            role = "transients"
        else:
            start = alert_night + timedelta(minutes=45)
            role = "broken"
        params = dict(
            fwhm=float(np.round(rng.uniform(2.6, 3.4), 2)),
            sky=float(np.round(rng.uniform(850.0, 1200.0), 1)),
            zp=float(np.round(25.0 - rng.uniform(0.0, 0.25), 3)),
            dither=(float(np.round(rng.uniform(-8, 8), 2)), float(np.round(rng.uniform(-8, 8), 2))),
        )
        wcs_error = (4.0, 0.05) if k == 1 and role == "reference" else (0.0, 0.0)
        # the dither moves the pointing by a few pixels (1″/px)
        ra = DEMO_RA + params["dither"][0] / 3600.0 / math.cos(math.radians(DEMO_DEC))
        dec = DEMO_DEC + params["dither"][1] / 3600.0
        prod = make_field(
            folder,
            seed=seed * 100 + k + 1,
            width=size,
            height=size,
            ra=ra,
            dec=dec,
            band=band,
            fwhm=params["fwhm"],
            sky=params["sky"],
            zp=params["zp"],
            date_obs=start.isoformat(timespec="seconds"),
            n_transients=2 if role == "transients" else 0,
            template=False,
            wcs_error_arcsec=wcs_error[0],
            wcs_error_rot_deg=wcs_error[1],
            starfield=starfield,
            object_name=DEMO_OBJECT,
            frame_name=f"frames/{name}.fits",
            catalog_name="catalog.fits" if k == 0 else None,
            truth_name=f"truth/{name}.json",
        )
        truth = prod.truth_data
        if role == "broken":
            full = prod.frame.stat().st_size
            keep = 2880 + int(0.4 * (full - 2880)) + 123
            with open(prod.frame, "r+b") as f:
                f.truncate(keep)
            truth["broken"] = f"truncated from {full} to {keep} bytes"
            prod.truth.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
        if role == "transients":
            trans_truth = truth
        frames.append(prod.frame)
        truths.append(prod.truth)
        entries.append({
            "file": f"frames/{name}.fits", "truth": f"truth/{name}.json", "role": role,
            "date_obs": truth["date_obs"], "fwhm_px": truth["fwhm_px"], "zp": truth["zp"], "sky": truth["sky"],
            "wcs_error_arcsec": truth["wcs_error_arcsec"], "n_transients": len(truth["transients"]),
            "mag_limit": truth["mag_limit"],
        })

    templates = make_template_library(
        folder / "templates", ra=DEMO_RA, dec=DEMO_DEC, width=size, height=size, band=band, seed=seed,
        starfield=starfield, extra_bands=(), object_name=DEMO_OBJECT,
        date_obs=(alert_night - timedelta(days=400)).isoformat(timespec="seconds"),
    )

    assert trans_truth is not None
    alert, alert_info = _make_alert(trans_truth, alert_night, rng)
    alert_path = folder / "alerts" / "ep_wxt_alert_demo.json"
    alert_path.parent.mkdir(parents=True, exist_ok=True)
    alert_path.write_text(json.dumps(alert, indent=2) + "\n", encoding="utf-8")

    manifest = {
        "generator": "stdd.synth.demo.make_demo",
        "seed": seed,
        "size": size,
        "band": band,
        "field": {"object": DEMO_OBJECT, "ra": DEMO_RA, "dec": DEMO_DEC},
        "catalog": "catalog.fits",
        "templates": [
            {"file": os.path.relpath(t.path, folder).replace(os.sep, "/"), "name": t.name, "role": t.role,
             "band": t.band, "ra": t.ra, "dec": t.dec, "width": t.width, "height": t.height}
            for t in templates
        ],
        "frames": entries,
        "alert": {"file": "alerts/ep_wxt_alert_demo.json", **alert_info},
    }
    manifest_path = folder / "demo.json"
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return DemoProducts(
        folder=folder, manifest=manifest_path, catalog=folder / "catalog.fits",
        templates=[t.path for t in templates], frames=frames, truths=truths,
        transient_frame=frames[i_trans], broken_frame=frames[i_broken], alert=alert_path,
    )


def _make_alert(truth: dict[str, Any], trigger: datetime, rng: np.random.Generator):
    """An EP WXT alert whose error circle sits on the frame around the brighter injected transient."""
    tr = min(truth["transients"], key=lambda t: t["mag"])
    width, height, scale = truth["width"], truth["height"], truth["pixscale_arcsec"]
    edge_px = min(tr["x"], tr["y"], width - 1 - tr["x"], height - 1 - tr["y"])
    radius = min(0.02, 0.6 * edge_px * scale / 3600.0)  # deg
    # centre the circle up to a third of its radius away from the transient
    pa = rng.uniform(0.0, 2 * math.pi)
    off = rng.uniform(0.0, radius / 3.0)
    dec = tr["dec"] + off * math.cos(pa)
    ra = tr["ra"] + off * math.sin(pa) / math.cos(math.radians(tr["dec"]))
    trigger_time = trigger.isoformat(timespec="milliseconds") + "Z"
    alert = {
        "$schema": EP_WXT_SCHEMA,
        "instrument": "WXT",
        "trigger_time": trigger_time,
        "ra": round(ra, 6),
        "dec": round(dec, 6),
        "ra_dec_error": round(radius, 6),
        "image_energy_range": [0.5, 4.0],
        "net_count_rate": 0.12,
        "image_snr": 9.6,
        "additional_info": "Synthetic Einstein Probe alert of the stdd demo data set, not a real event: "
                           "its error circle lies on the demo frames around an injected optical transient.",
    }
    info = {"ra": alert["ra"], "dec": alert["dec"], "radius_deg": alert["ra_dec_error"],
            "trigger_time": trigger_time, "transient": {"ra": tr["ra"], "dec": tr["dec"], "mag": tr["mag"]}}
    return alert, info
