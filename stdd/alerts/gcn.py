"""GCN facts shared by the format parsers: notice type numbers, missions, conventions.

Numbers and names are GCN's (classic notice types, as used by Packet_Type in VOEvents and
by gcn.classic.* topic names). Containment conventions per mission are GCN's documented
ones: Swift, INTEGRAL, IceCube/AMON quote 90 % radii; Fermi GBM and LAT quote "1-sigma"
radii, which GCN's own JSON conversion states as containment_probability 0.68.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

#: classic notice type number -> name
PACKET_TYPES: dict[int, str] = {
    1: "GRB_COORDS", 2: "TEST_COORDS", 3: "IM_ALIVE", 4: "KILL_SOCKET", 11: "MAXBC",
    21: "BRAD_COORDS", 22: "GRB_FINAL", 24: "HUNTS_SRC", 25: "ALEXIS_SRC", 26: "XTE_PCA_ALERT",
    27: "XTE_PCA_SRC", 28: "XTE_ASM_ALERT", 29: "XTE_ASM_SRC", 30: "COMPTEL_SRC", 31: "IPN_RAW",
    32: "IPN_SEG", 33: "SAX_WFC_ALERT", 34: "SAX_WFC_SRC", 35: "SAX_NFI_ALERT", 36: "SAX_NFI_SRC",
    37: "XTE_ASM_TRANS", 39: "IPN_POS", 40: "HETE_ALERT_SRC", 41: "HETE_UPDATE_SRC",
    42: "HETE_FINAL_SRC", 43: "HETE_GNDANA_SRC", 44: "HETE_TEST", 45: "GRB_CNTRPART",
    46: "SWIFT_TOO_FOM", 47: "SWIFT_TOO_SC_SLEW", 48: "DOW_TOD", 51: "INTEGRAL_POINTDIR",
    52: "INTEGRAL_SPIACS", 53: "INTEGRAL_WAKEUP", 54: "INTEGRAL_REFINED", 55: "INTEGRAL_OFFLINE",
    56: "INTEGRAL_WEAK", 57: "AAVSO", 58: "MILAGRO_POS", 59: "KONUS_LC", 60: "SWIFT_BAT_GRB_ALERT",
    61: "SWIFT_BAT_GRB_POS_ACK", 62: "SWIFT_BAT_GRB_POS_NACK", 63: "SWIFT_BAT_GRB_LC",
    64: "SWIFT_BAT_SCALEDMAP", 65: "SWIFT_FOM_OBS", 66: "SWIFT_SC_SLEW", 67: "SWIFT_XRT_POSITION",
    68: "SWIFT_XRT_SPECTRUM", 69: "SWIFT_XRT_IMAGE", 70: "SWIFT_XRT_LC", 71: "SWIFT_XRT_CENTROID",
    72: "SWIFT_UVOT_DBURST", 73: "SWIFT_UVOT_FCHART", 76: "SWIFT_BAT_GRB_LC_PROC",
    77: "SWIFT_XRT_SPECTRUM_PROC", 78: "SWIFT_XRT_IMAGE_PROC", 79: "SWIFT_UVOT_DBURST_PROC",
    80: "SWIFT_UVOT_FCHART_PROC", 81: "SWIFT_UVOT_POS", 82: "SWIFT_BAT_GRB_POS_TEST",
    83: "SWIFT_POINTDIR", 84: "SWIFT_BAT_TRANS", 85: "SWIFT_XRT_THRESHPIX",
    86: "SWIFT_XRT_THRESHPIX_PROC", 87: "SWIFT_XRT_SPER", 88: "SWIFT_XRT_SPER_PROC",
    89: "SWIFT_UVOT_POS_NACK", 90: "SWIFT_BAT_ALARM_SHORT", 91: "SWIFT_BAT_ALARM_LONG",
    92: "SWIFT_UVOT_EMERGENCY", 93: "SWIFT_XRT_EMERGENCY", 94: "SWIFT_FOM_PPT_ARG_ERR",
    95: "SWIFT_FOM_SAFE_POINT", 96: "SWIFT_FOM_SLEW_CONCSTR", 97: "SWIFT_BAT_QL_POS",
    98: "SWIFT_BAT_SUB_THRESHOLD", 99: "SWIFT_BAT_SLEW_POS", 100: "AGILE_GRB_WAKEUP",
    101: "AGILE_GRB_PROMPT", 102: "AGILE_GRB_REFINED", 103: "SWIFT_ACTUAL_POINTDIR", 105: "AGILE_MCAL_ALERT",
    107: "AGILE_POINTDIR", 109: "AGILE_GRB_POS_TEST", 110: "FERMI_GBM_ALERT",
    111: "FERMI_GBM_FLT_POS", 112: "FERMI_GBM_GND_POS", 113: "FERMI_GBM_LC",
    114: "FERMI_GBM_GND_INTERNAL", 115: "FERMI_GBM_FIN_POS", 116: "FERMI_GBM_ALERT_INTERNAL",
    117: "FERMI_GBM_FLT_INTERNAL", 118: "FERMI_GBM_TRANS", 119: "FERMI_GBM_POS_TEST",
    120: "FERMI_LAT_POS_INI", 121: "FERMI_LAT_POS_UPD", 122: "FERMI_LAT_POS_DIAG",
    123: "FERMI_LAT_TRANS", 124: "FERMI_LAT_POS_TEST", 125: "FERMI_LAT_MONITOR",
    126: "FERMI_SC_SLEW", 127: "FERMI_LAT_GND", 128: "FERMI_LAT_OFFLINE", 129: "FERMI_POINTDIR",
    130: "SIMBADNED", 131: "FERMI_GBM_SUBTHRESH", 133: "SWIFT_BAT_MONITOR", 134: "MAXI_UNKNOWN",
    135: "MAXI_KNOWN", 136: "MAXI_TEST", 137: "OGLE", 138: "CBAT", 139: "MOA", 141: "SWIFT_BAT_KNOWN_SRC", 145: "COINCIDENCE",
    149: "SNEWS", 150: "LVC_PRELIMINARY", 151: "LVC_INITIAL", 152: "LVC_UPDATE", 153: "LVC_TEST",
    154: "LVC_COUNTERPART", 157: "AMON_ICECUBE_COINC", 158: "AMON_ICECUBE_HESE",
    160: "CALET_GBM_FLT_LC", 161: "CALET_GBM_GND_LC",
    163: "LVC_EARLY_WARNING", 164: "LVC_RETRACTION", 171: "HAWC_BURST_MONITOR",
    172: "AMON_NU_EM_COINC", 173: "ICECUBE_ASTROTRACK_GOLD", 174: "ICECUBE_ASTROTRACK_BRONZE",
    175: "SK_SN", 176: "ICECUBE_CASCADE", 188: "GECAM_FLT", 189: "GECAM_GND",
}
PACKET_NUMBERS = {v: k for k, v in PACKET_TYPES.items()}
CONTROL_TYPES = {"IM_ALIVE", "KILL_SOCKET"}
RETRACTION_TYPES = {"LVC_RETRACTION"}

#: notice-type name prefix -> (mission, instrument)
_PREFIX_MISSION = [
    ("SWIFT_BAT_GUANO", "Swift", "BAT-GUANO"), ("SWIFT_BAT", "Swift", "BAT"), ("SWIFT_XRT", "Swift", "XRT"),
    ("SWIFT_UVOT", "Swift", "UVOT"), ("SWIFT", "Swift", None),
    ("FERMI_GBM", "Fermi", "GBM"), ("FERMI_LAT", "Fermi", "LAT"), ("FERMI", "Fermi", None),
    ("INTEGRAL", "INTEGRAL", None), ("AGILE", "AGILE", None), ("MAXI", "MAXI", "GSC"),
    ("LVC", "LVK", None), ("LVK", "LVK", None),
    ("AMON_ICECUBE", "IceCube", None), ("ICECUBE", "IceCube", None), ("AMON", "AMON", None),
    ("SK_SN", "Super-Kamiokande", None), ("SNEWS", "SNEWS", None), ("CALET", "CALET", "GBM"),
    ("GECAM", "GECAM", None), ("HAWC", "HAWC", None), ("KONUS", "Konus-Wind", None),
    ("HETE", "HETE", None), ("IPN", "IPN", None), ("GWHEN", "GWHEN", None), ("COINCIDENCE", "GCN", None),
    ("GRB_CNTRPART", "GCN", None), ("IM_ALIVE", "GCN", None), ("KILL_SOCKET", "GCN", None),
    ("TEST_COORDS", "GCN", None), ("SUZAKU", "Suzaku", None),
]


def mission_for_type(name: str | None) -> tuple[str | None, str | None]:
    if not name:
        return None, None
    upper = name.upper()
    for prefix, mission, instrument in _PREFIX_MISSION:
        if upper.startswith(prefix):
            return mission, instrument
    return None, None


#: canonical spellings of mission names found in notices (lower-case key)
MISSION_NAMES = {
    "swift": "Swift", "fermi": "Fermi", "einstein_probe": "Einstein Probe", "einstein probe": "Einstein Probe",
    "ep": "Einstein Probe", "svom": "SVOM", "icecube": "IceCube", "km3net": "KM3NeT", "maxi": "MAXI",
    "chime": "CHIME", "dsa110": "DSA-110", "dsa-110": "DSA-110", "superk": "Super-Kamiokande",
    "super-kamiokande": "Super-Kamiokande", "burstcube": "BurstCube", "boom": "BOOM", "heasarc": "HEASARC",
    "glowbug": "GLOWBUG", "lvk": "LVK", "igwn": "LVK", "ligo": "LVK", "integral": "INTEGRAL", "agile": "AGILE",
    "calet": "CALET", "gecam": "GECAM", "amon": "AMON", "snews": "SNEWS", "hawc": "HAWC",
}


def canonical_mission(name: str | None) -> str | None:
    if not name:
        return None
    return MISSION_NAMES.get(str(name).strip().lower(), str(name).strip())


def voevent_containment(notice_type: str | None, mission: str | None) -> float:
    """Containment probability of a classic notice's error radius (GCN's convention per mission)."""
    t = (notice_type or "").upper()
    if t.startswith("FERMI_") or mission == "Fermi":
        return 0.68
    if t.startswith("AGILE"):
        return 0.68  # AGILE quotes 1-sigma (68 %) radii
    return 0.9


# -- classification ----------------------------------------------------------------------
#: GBM's class table (Most_Likely_Index / Sec_Most_Likely_Index in GBM flight notices)
GBM_CLASSES = {
    0: "ERROR", 1: "UNRELIABLE_LOCATION", 2: "LOCAL_PARTICLES", 3: "BELOW_HORIZON", 4: "GRB",
    5: "GENERIC_SGR", 6: "GENERIC_TRANSIENT", 7: "DISTANT_PARTICLES", 8: "SOLAR_FLARE", 9: "CYG_X1",
    10: "SGR_1806_20", 11: "GROJ_0422_32", 19: "TGF",
}
#: classes that are not astrophysical transients (or not a usable localisation)
NON_ASTRO_CLASSES = {
    "ERROR", "UNRELIABLE_LOCATION", "LOCAL_PARTICLES", "BELOW_HORIZON", "DISTANT_PARTICLES", "TGF",
    "TERRESTRIAL", "NOISE", "GLITCH", "LOCAL PARTICLES", "DISTANT PARTICLES",
}


def _norm_class(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip()).upper()


def classify(classification: dict[str, float], *, grb_monitor: bool) -> tuple[str | None, str | None]:
    """(most likely class, reason it is not astrophysical or not a GRB) from a class → probability map.

    For a gamma-ray burst monitor (GBM and its kind), anything whose most likely class is not
    GRB is not acted on; for everyone else only the non-astrophysical classes are.
    """
    if not classification:
        return None, None
    try:
        best = max(classification.items(), key=lambda kv: float(kv[1]))[0]
    except (TypeError, ValueError):
        return None, None
    norm = _norm_class(best)
    if grb_monitor and norm != "GRB":
        return best, f"most likely class is {best}, not a GRB"
    if norm.replace("_", " ") in NON_ASTRO_CLASSES or norm in NON_ASTRO_CLASSES:
        return best, f"most likely class is {best} (not astrophysical)"
    return best, None


# -- times -------------------------------------------------------------------------------
def iso_utc(value) -> str | None:
    """Normalise an ISO 8601 time (with or without zone, 'T' or space) to YYYY-MM-DDTHH:MM:SS.ffffffZ."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    try:
        dt = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return _fmt(dt)


def _fmt(dt: datetime) -> str:
    s = dt.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return s + "Z"


def tjd_sod_to_iso(tjd, sod) -> str | None:
    """GCN's Truncated Julian Day (MJD - 40000) and seconds of day to ISO UTC."""
    try:
        tjd, sod = float(tjd), float(sod)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(tjd) and math.isfinite(sod)) or tjd <= 0:
        return None
    mjd0 = datetime(1858, 11, 17)
    return _fmt(mjd0 + timedelta(days=tjd + 40000, seconds=sod))


def to_epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "t", "y")
