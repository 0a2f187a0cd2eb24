"""What the plain script writes beside its tables: STDPipe's photometry plots and cutout files.

Kept apart from `bench.plain_script` (the stages' arithmetic) only for its length.
"""
from __future__ import annotations

import warnings
from pathlib import Path


def photometry_plots(m, obj, shape, sn, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from stdpipe import plots as splots

    fig = plt.figure(figsize=(8, 5))
    splots.plot_photometric_match(m, ax=fig.gca(), mode="mag")
    fig.savefig(out / "photometry_match.png", dpi=80)
    plt.close(fig)
    fig = plt.figure(figsize=(8, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    splots.plot_photometric_match(m, ax=ax1, mode="model", show_dots=True, aspect="equal",
                                  range=[[0, shape[1]], [0, shape[0]]])
    splots.plot_photometric_match(m, ax=ax2, mode="residuals", show_dots=True, aspect="equal",
                                  range=[[0, shape[1]], [0, shape[0]]])
    fig.savefig(out / "photometry_zeropoint.png", dpi=80)
    plt.close(fig)
    fig = plt.figure(figsize=(7, 4.5))
    splots.plot_detection_limit(obj, sn=sn, ax=fig.gca())
    fig.savefig(out / "photometry_limit.png", dpi=80)
    plt.close(fig)


def write_cutouts(out: Path, kind: str, cand, planes: dict, header, wcs, p) -> None:
    from stdpipe import cutouts

    (out / "cutouts").mkdir(exist_ok=True)
    first = next(iter(planes))
    extra = {k: v for k, v in planes.items() if k != first}
    for k, r in enumerate(cand[:p.max_cutouts]):
        row = {"x": r["x"], "y": r["y"], "ra": r["ra"], "dec": r["dec"], "mag": r["mag_calib"], "flags": r["flags"],
               "id": f"{kind}_{k + 1:03d}"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cut = cutouts.get_cutout(planes[first], row, p.cutout_radius, header=header, wcs=wcs, **extra)
            cutouts.write_cutout(cut, str(out / "cutouts" / f"{kind}_{k + 1:03d}.fits"))
