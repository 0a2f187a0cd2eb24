"""STDWeb's `diagnose_color`: the photometric calibration tried with every colour the reference
catalogue offers, to see which colour term describes the frame's band best (a 0.2 mag offset can
hide in a wrong colour choice, STDWeb's issue #13). For each pair of catalogue bands: the fitted
colour term with its error, the zero point at the centre and the robust scatter of the calibration
stars' residuals. Written as `color_diagnostics.json` and a plot; the calibration itself is not
changed."""
from __future__ import annotations

import math
import warnings

import numpy as np

from .products import new_figure, save_figure, write_json


def color_diagnostics(run, obj, cat, cat_band: str, sr_deg: float, order: int, max_pairs: int = 10) -> list[dict]:
    from stdpipe import pipeline as spipe

    bands = [c[:-3] for c in cat.colnames if c.endswith("mag") and not c.startswith("e_")]
    col = f"{cat_band}mag"
    out = []
    pairs = [(a, b) for i, a in enumerate(bands) for b in bands[i + 1:]][:max_pairs]
    for c1, c2 in pairs:
        cc = np.asarray(cat[f"{c1}mag"], float) - np.asarray(cat[f"{c2}mag"], float)
        if np.sum(np.isfinite(cc)) < 10:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                m = spipe.calibrate_photometry(obj, cat, sr=sr_deg, order=order, cat_col_mag=col,
                                               cat_col_mag1=f"{c1}mag", cat_col_mag2=f"{c2}mag", cat_col_ra="RAJ2000",
                                               cat_col_dec="DEJ2000", accept_flags=0x02, robust=True,
                                               scale_noise=True, use_color=True, update=False, verbose=False)
            except Exception as e:  # one colour that cannot be fitted does not stop the others
                out.append({"color": f"{c1}-{c2}", "error": f"{type(e).__name__}: {e}"})
                continue
        if m is None or not m["idx"].sum():
            out.append({"color": f"{c1}-{c2}", "error": "no fit"})
            continue
        resid = (m["zero"] - m["zero_model"])[m["idx"]]
        ct = m.get("color_term")
        out.append({"color": f"{c1}-{c2}", "color_term": float(np.atleast_1d(ct)[0]) if ct is not None else None,
                    "n_stars": int(m["idx"].sum()),
                    "scatter": float(1.4826 * np.median(np.abs(resid - np.median(resid)))),
                    "zp_median": float(np.median(m["zero_model"][m["idx"]]))})
    write_json(run.product("color_diagnostics.json"), {"band": cat_band, "fits": out})
    good = [f for f in out if f.get("scatter") is not None]
    if good:
        fig = new_figure((6.5, 4))
        ax = fig.add_subplot(1, 1, 1)
        ax.bar([f["color"] for f in good], [f["scatter"] for f in good], color="C0")
        for k, f in enumerate(good):
            ax.text(k, f["scatter"], f"{f['color_term']:+.3f}" if f["color_term"] is not None and
                    math.isfinite(f["color_term"]) else "", ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("zero-point scatter, mag")
        ax.set_title(f"{cat_band}: calibration with each colour (labels: colour term)", fontsize=9)
        save_figure(fig, run.product("plots/photometry_colors.png"))
    run.log("colour diagnostics: " + ", ".join(f"{f['color']} scatter {f['scatter']:.3f}" for f in good))
    return out
