"""Synthetic frames with exact truth, for tests, the demo and benchmarks.

* :mod:`.starfield` — a deterministic synthetic sky (stars, colours, Vizier-style catalogue);
* :mod:`.render` — Moffat stars, noise, cosmic rays, TAN/SIP WCS;
* :mod:`.field` — :func:`make_field` (frame + catalogue + template + truth JSON), :func:`make_template_library`;
* :mod:`.demo` — :func:`make_demo`, the demo data set.
"""
from .field import (
    FieldProducts,
    TemplateInfo,
    default_starfield,
    detection_limits,
    expected_snr,
    flux_for_snr,
    load_truth,
    make_field,
    make_template_library,
    wcs_from_truth,
)
from .starfield import BANDS, COLOR_OF_BAND, StarField

__all__ = [
    "BANDS",
    "COLOR_OF_BAND",
    "FieldProducts",
    "StarField",
    "TemplateInfo",
    "default_starfield",
    "detection_limits",
    "expected_snr",
    "flux_for_snr",
    "load_truth",
    "make_field",
    "make_template_library",
    "wcs_from_truth",
]
