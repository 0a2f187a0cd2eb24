"""Calibration of raw frames: frame types, master bias / dark / flat and bad-pixel masks, the library.

* :mod:`.frametypes` — what a frame is (bias, dark, flat, light) and the facts that group it
  (instrument, geometry, binning, readout mode, temperature, band, exposure time), from its header;
* :mod:`.geometry` — overscan subtraction and trimming per the instrument profile (or the header);
* :mod:`.grouping` — sets of calibration frames that combine into one master;
* :mod:`.masters` — one master from one set, combined with ccdproc, with its quality figures;
* :mod:`.badpixels` — the bad-pixel mask from a master dark and a master flat;
* :mod:`.library` — the library folder: masters, ``index.json``, validity, the nearest valid master;
* :mod:`.build` — files or folders → masters in a library (``stdd calib build``, the daemon's job);
* :mod:`.apply` — a light frame corrected with its masters, with its error (the calibrate stage).

Design note: docs/calibration.md.
"""
