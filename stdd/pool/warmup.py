"""Importing this module readies the fork server: first-use costs paid once, not per frame process.

Design note: the fork server's preload takes module names only, so the work is what importing
this module does; the pool always puts it last in the preload list. Every frame process forked
afterwards inherits the result. Two parts:

* warm-up (when the stage libraries are preloaded): what the stages do on first use —
  matplotlib's Agg canvas, fonts and PNG writer; astropy's VOTable converters and unit parsing
  (SCAMP's XML report is a VOTable), ECSV (YAML) and FITS table writers; Time arithmetic. It
  touches no file and no network; a failure only means a cold start, never a broken server.
* `gc.freeze()`: the ~340,000 objects of the preloaded libraries move to the permanent
  generation. A full collection no longer walks them, and walking them in a forked child wrote
  to every object header (copy-on-write of the whole heap): measured in forked children, the
  first full collection of a frame cost 0.22–0.27 s, and full collections averaged 0.16 s per
  1024² frame without the freeze against 0.05 s with it.
"""
from __future__ import annotations

import io
import logging

log = logging.getLogger("stdd.pool")

# the field types and units of SCAMP's XML report (stdpipe reads it after each SCAMP run)
_VOTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.1" xmlns="http://www.ivoa.net/xml/VOTable/v1.1">
<RESOURCE ID="warm" name="warm">
<TABLE ID="Fields" name="Fields">
<PARAM name="p1" datatype="float" arraysize="2" unit="arcsec" value="0.1 0.1"/>
<PARAM name="p2" datatype="char" arraysize="*" value="x"/>
<FIELD name="a" datatype="int"/>
<FIELD name="b" datatype="float"/>
<FIELD name="c" datatype="char" arraysize="*"/>
<FIELD name="d" datatype="float" arraysize="2" unit="arcsec"/>
<FIELD name="e" datatype="float" arraysize="1" unit="mag"/>
<FIELD name="f" datatype="int" arraysize="1"/>
<FIELD name="g" datatype="float" unit="deg"/>
<FIELD name="h" datatype="boolean"/>
<FIELD name="i" datatype="float" unit="arcmin"/>
<FIELD name="j" datatype="double" arraysize="2" unit="deg"/>
<FIELD name="k" datatype="double" unit="yr"/>
<FIELD name="l" datatype="float" unit="pix"/>
<FIELD name="m" datatype="float" unit="s"/>
<DATA><TABLEDATA>
<TR><TD>1</TD><TD>0.5</TD><TD>x</TD><TD>0.1 0.2</TD><TD>12.0</TD><TD>2</TD><TD>150.0</TD><TD>T</TD>
<TD>1.5</TD><TD>150.0 2.0</TD><TD>2020.0</TD><TD>1.0</TD><TD>1.0</TD></TR>
</TABLEDATA></DATA>
</TABLE>
</RESOURCE>
</VOTABLE>
"""


def warm() -> None:
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # plots: the Agg canvas, fonts (regular text and the unicode the titles use), PNG output
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot([0, 1], [1, 0], ".", alpha=0.5)
        q = ax.quiver([0.5], [0.5], [0.1], [0.1])
        ax.quiverkey(q, 0.9, 1.02, 0.1, '0.1"', labelpos="W")
        sc = ax.scatter([0, 1], [0, 1], c=[0.0, 1.0], s=4)
        fig.colorbar(sc, ax=ax, label="arcsec")
        ax.set_title("ΔRA cos Dec, arcsec", loc="left")
        ax.grid(alpha=0.3)
        fig.savefig(io.BytesIO(), format="png", dpi=40)

        # tables: VOTable (SCAMP's report), ECSV (YAML header), FITS binary tables
        from astropy.table import Table

        Table.read(io.BytesIO(_VOTABLE.encode()), format="votable", table_id=0)
        t = Table({"ra": np.array([150.0]), "mag": np.array([12.0]), "name": ["x"]})
        t["ra"].unit = "deg"
        t["mag"].unit = "mag"
        t.write(io.StringIO(), format="ascii.ecsv")
        buf = io.BytesIO()
        t.write(buf, format="fits")
        buf.seek(0)
        Table.read(buf, format="fits")

        # times and units as the stages use them
        from astropy import units as u
        from astropy.time import Time

        (Time("2020-01-01T00:00:00", scale="utc") + 1.5 * u.s).utc.isot
        (1 * u.arcsec).to(u.deg)


def ready() -> None:
    import gc
    import sys

    if "stdpipe.photometry" in sys.modules:  # the stage libraries are preloaded: warm them
        try:
            warm()
        except Exception as e:  # a cold start is slower, never broken
            log.debug("fork server warm-up incomplete: %s: %s", type(e).__name__, e)
    gc.collect()
    gc.freeze()


ready()
