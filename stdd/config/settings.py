"""Typed settings: the one description of every key stdd accepts.

Every model forbids unknown keys, so a typo is an error that names the key rather than a
silently ignored setting. Paths stay as written here; `stdd.config.load` resolves them
against the config file's folder once, at load time.

Design note: pydantic v2 models, one per TOML section. The pipeline section holds STDWeb's
defaults (shared/spec/stages.md) so that a frame processed by stdd and by STDWeb with default
settings is measured the same way.

Why this module is long: it is the one place every key is declared, with its type, bounds and
description; splitting the sections across modules would scatter what `stdd config show` prints.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .store_settings import StackSettings, StoreSettings


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsSettings(Section):
    """Where stdd keeps its state. Everything lives under `var` unless placed elsewhere."""

    var: Path = Path("var")
    incoming: list[Path] = Field(default_factory=lambda: [Path("var/incoming")])
    work: Path = Path("var/work")
    results: Path = Path("var/results")
    quarantine: Path = Path("var/quarantine")
    archive: Path = Path("var/archive")
    database: Path = Path("var/stdd.sqlite")
    cache: Path = Path("var/cache")
    requests: Path = Path("var/requests")
    alert_drop: Path = Path("var/alerts-incoming")


class WatchSettings(Section):
    patterns: list[str] = Field(
        default_factory=lambda: ["*.fits", "*.fit", "*.fts", "*.fits.fz", "*.fits.gz", "*.fit.gz", "*.fts.gz"]
    )
    ignore: list[str] = Field(default_factory=lambda: [".*", "*.part", "*.tmp", "*~"])
    settle_seconds: float = Field(2.0, ge=0)
    poll: bool = False
    poll_interval: float = Field(1.0, gt=0)
    rescan_minutes: float = Field(10.0, gt=0)
    recursive: bool = True
    after_success: Literal["leave", "archive", "delete"] = "leave"
    incomplete_seconds: float = Field(
        20.0, gt=0, description="a settled file that is still not a whole FITS file is failed after this long"
    )
    profiles: dict[Path, str] = Field(
        default_factory=dict,
        description="incoming folder (one of paths.incoming or a folder inside one; relative to the config file) "
                    "-> instrument profile name for the frames found in it; beats header matching "
                    "(stdd.stages.profiles)")


class PoolSettings(Section):
    executor: Literal["local", "dask"] = "local"
    workers: int = Field(0, ge=0, description="0 means the number of CPU cores")
    max_attempts: int = Field(3, ge=1)
    retry_backoff_seconds: float = Field(30.0, ge=0)
    stage_timeout_seconds: float = Field(1800.0, gt=0)
    kill_grace_seconds: float = Field(10.0, ge=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    crash_loop_failures: int = Field(5, ge=1)
    crash_loop_window_seconds: float = Field(120.0, gt=0)
    crash_loop_pause_minutes: float = Field(
        30.0, ge=0, description="intake resumes by itself after this long; 0 = only when resumed by hand"
    )
    stage_timeouts: dict[Literal["calibrate", "inspect", "photometry", "transients", "subtraction"], float] = Field(
        default_factory=dict, description="per-stage timeout in seconds, overriding stage_timeout_seconds"
    )
    retry_timeouts: bool = Field(False, description="retry a frame whose stage timed out (a hang is usually not transient)")
    preload_stage_libraries: bool = Field(
        True, description="import the stages' libraries once in the fork server: ~2.5 s less per frame, "
                          "~240 MB more while idle")
    warm_at_start: bool = Field(
        False, description="start the warm fork server with the daemon, not when the first file appears")
    warm_idle_minutes: float = Field(
        15.0, ge=0, description="stop the warm fork server (its ~300 MB) after this long without frames; "
                                "the next file starts it again (~3 s, overlapping the settle window). 0 = never")
    threads_per_frame: int = Field(
        0, ge=0, description="threads one frame may keep busy: 0 = cores ÷ workers (at least 1). With 2 or more, a "
                             "frame draws its plots on a helper thread while its next stages run and subtracts that "
                             "many tiles at a time; with 1 (the default "
                             "when workers = cores) it draws them in line, so no frame takes CPU from another")
    frames_per_process: int = Field(
        20, ge=1, description="a frame process that ended its frame cleanly takes up to this many frames in all "
                              "(warm: ~10 % faster per frame); 1 = a new process for every frame")
    process_max_rss_mb: float = Field(
        3000.0, ge=0, description="a frame process holding more memory than this after a frame is not reused; 0 = no limit")
    stage_functions: dict[Literal["calibrate", "inspect", "photometry", "transients", "subtraction"], str] = Field(
        default_factory=dict, description="tests and experiments: replace a stage's function, name -> module:callable"
    )
    dask_scheduler: str | None = None
    dask_path_map: dict[str, str] = Field(
        default_factory=dict,
        description="executor = dask: daemon-side path prefix -> the same folder as Dask workers see it",
    )

    @model_validator(mode="after")
    def _dask(self):
        if self.executor == "dask" and not self.dask_scheduler:
            raise ValueError('executor = "dask" needs dask_scheduler, the scheduler\'s address (e.g. "tcp://head:8786")')
        bad = [f"{k} -> {v}" for k, v in self.dask_path_map.items() if not (k.startswith("/") and v.startswith("/"))]
        if bad:
            raise ValueError(f"dask_path_map maps absolute paths only: {', '.join(bad)}")
        return self

    @property
    def effective_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def effective_threads_per_frame(self) -> int:
        """For the local pool: the configured value, else this machine's cores shared among the workers."""
        return self.threads_per_frame or max(1, (os.cpu_count() or 1) // self.effective_workers)


class HttpSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8754, ge=0, le=65535)
    unix_socket: Path | None = None
    token_file: Path = Path("var/http.token")
    token_env: str = "STDD_HTTP_TOKEN"
    open_reads: bool = True
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="names the endpoint answers to in the Host header, beside its own address (and localhost, "
                    "127.0.0.1, [::1] when it listens on loopback); any other Host is refused (DNS rebinding). "
                    "Add the names a reverse proxy or the observatory network uses, e.g. [\"stdd.obs.local\"]")


FORMER_PIPELINE_KEYS = {"blind_radius_deg": "blind_match_sr0", "blind_scale_lower_arcsec": "blind_match_ps_lo",
                        "blind_scale_upper_arcsec": "blind_match_ps_up"}


def parse_time_setting(value: str):
    """`pipeline.time` as an astropy Time: a number is an MJD, anything else ISO (or FITS) date text."""
    from astropy.time import Time

    text = str(value).strip()
    try:
        return Time(float(text), format="mjd", scale="utc")
    except ValueError:
        pass
    try:
        return Time(text.replace(" ", "T", 1) if re.fullmatch(r"\d{4}-\d\d-\d\d \d.*", text) else text, scale="utc")
    except ValueError:
        raise ValueError(f"time {value!r} is neither an ISO date (2026-03-01T03:00:00) nor an MJD") from None


def parse_crop(value) -> tuple[int, int, int, int]:
    """`pipeline.crop` as 0-based (x0, x1, y0, y1), ends exclusive."""
    if isinstance(value, str):
        m = re.fullmatch(r"\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]", value.strip())
        if m is None:
            parts = [p for p in re.split(r"[\s,]+", value.strip()) if p]
            if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
                raise ValueError(f"crop {value!r} is neither a FITS section [x1:x2,y1:y2] nor x0,x1,y0,y1")
            x0, x1, y0, y1 = (int(p) for p in parts)
        else:
            a, b, c, d = (int(g) for g in m.groups())
            x0, x1, y0, y1 = a - 1, b, c - 1, d
    else:
        x0, x1, y0, y1 = (int(v) for v in value)
    if x0 < 0 or y0 < 0 or x1 - x0 < 16 or y1 - y0 < 16:
        raise ValueError(f"crop {value!r}: the kept part must start inside the frame and be at least 16x16 pixels")
    return x0, x1, y0, y1


#: HOTPANTS's command-line options (its usage text), without the leading dash
HOTPANTS_OPTIONS = frozenset((
    "tu tuk tl tg tr tp tni tmi iu iuk il ig ir ip ini imi ki r kcs ft sft nft mins mous omi gd nrx nry rss "
    "savexy afssc nss stamp_pos ssig ko bgo n fom c v savexy hki oci oni ond obs obz nsx nsy ng convvar "
    "cmp oin sconv useWeight fi okn allm mcs ks").split())


class PipelineSettings(Section):
    """Processing parameters; defaults are STDWeb's."""

    steps: list[Literal["calibrate", "inspect", "photometry", "transients", "subtraction"]] = Field(
        default_factory=lambda: ["inspect", "photometry", "transients", "subtraction"],
        description="calibrate runs before inspect whenever calibration.library is set, listed or not")
    instrument: str | None = None
    # inspect
    mask_cosmics: bool = True
    max_masked_fraction: float = Field(0.95, gt=0, le=1)
    saturation: float | None = None
    gain: float | None = None
    filter: str | None = None
    # photometry
    sn: float = Field(5.0, gt=0)
    detection_thresh: float = Field(2.0, gt=0)
    initial_aper: float = Field(3.0, gt=0)
    rel_aper: float = Field(1.0, gt=0)
    rel_bg1: float = Field(5.0, gt=0)
    rel_bg2: float = Field(7.0, gt=0)
    bg_size: int = Field(256, gt=0)
    minarea: int = Field(3, ge=1)
    optimal_extraction: bool = False
    prefilter_outliers: bool = True
    blend_filter: bool = True
    cat_limit: float = 20.0
    spatial_order: int = Field(2, ge=0, le=5)
    use_color: bool = True
    bg_term: bool = False
    nonlin_term: bool = False
    refine_wcs: bool = True
    wcs_order: int = Field(3, ge=0, le=6)
    wcs_max_rms_arcsec: float = Field(2.0, gt=0)
    blind_match: bool = True
    # stdd additions (not in STDWeb)
    min_aper_pixels: float = Field(2.0, ge=0, description="aperture radius floor for undersampled frames")
    # STDWeb parity: photometry (docs/stdweb-settings.md)
    initial_r0: float = Field(0.0, ge=0, le=20, description="detection smoothing kernel radius, px (SExtractor's "
                                                          "filter; 0 = none). STDWeb: initial_r0 = 0")
    fwhm_override: float | None = Field(None, gt=0, le=100, description="a fixed FWHM (px) instead of the measured "
                                                                     "one (the aperture follows it). STDWeb: none")
    force_color_term: float | None = Field(None, ge=-5, le=5, description="a fixed colour term instead of fitting "
                                                                       "one. STDWeb: none")
    cat_mag_lower: float | None = Field(None, description="bright limit of calibration (and WCS) stars, mag. "
                                                          "STDWeb: none")
    cat_mag_upper: float | None = Field(None, description="faint limit of calibration stars, mag; replaces "
                                                          "cat_limit when set. STDWeb: none")
    sr_override: float | None = Field(None, gt=0, le=60, description="catalogue matching radius, arcsec (default: "
                                                                    "from the FWHM). STDWeb: none")
    diagnose_color: bool = Field(False, description="also calibrate with every colour the catalogue offers and "
                                                    "compare (color_diagnostics.json, a plot). STDWeb: false")
    write_segmentation: bool = Field(False, description="also write SExtractor's segmentation map "
                                                        "(segmentation.fits)")
    # STDWeb parity: transients and subtraction (docs/stdweb-settings.md)
    simple_center: str | None = Field(None, description="restrict the simple-transient search to a cone around "
                                                         "this position (\"RA Dec\", degrees or sexagesimal). "
                                                         "STDWeb: none")
    simple_sr0: float = Field(1.0, gt=0, le=180, description="radius of that cone, degrees")
    simple_skybot: bool | None = Field(None, description="STDWeb's name of `skybot` (known asteroids rejected, "
                                                          "online; STDWeb's default true, stdd's false as it runs "
                                                          "offline by default); when set it wins over skybot")
    simple_others: list[Path] = Field(
        default_factory=list, description="other frames (result or work folders with objects.fits, or objects "
                                          "tables): simple candidates found in them too are not new. STDWeb: ''")
    filter_vizier: bool = Field(False, description="difference candidates on a known object of the Vizier "
                                                   "catalogues (catalog.transient_catalogs) are dropped; online. "
                                                   "STDWeb: false")
    filter_skybot: bool = Field(False, description="difference candidates on a known asteroid (SkyBoT) are dropped; "
                                                   "online. STDWeb: false")
    filter_prefilter: bool = Field(True, description="shape pre-filter of difference candidates: sharper than half "
                                                     "the PSF, wider than 2.5 FWHM or elongated beyond 3:1 are "
                                                     "rejected. STDWeb: true")
    filter_center: str | None = Field(None, description="restrict difference candidates to a cone around this "
                                                         "position. STDWeb: none")
    filter_sr0: float = Field(1.0, gt=0, le=180, description="radius of that cone, degrees (STDWeb: 1)")
    cutout_size: int | None = Field(None, ge=9, le=401, description="cutout size, px (STDWeb: 30); when set, "
                                                                    "cutout_radius = cutout_size // 2")
    hotpants_extra: dict[str, float | int | str] = Field(
        default_factory=lambda: {"ko": 0, "bgo": 0},
        description="HOTPANTS options passed as given (nrx, nry, nsx, nsy, nss, rss, kcs, ft, nft, ssig, ks, ko, "
                    "bgo, ...). STDWeb: {ko: 0, bgo: 0}")
    template_fwhm_override: float | None = Field(None, gt=0, le=100, description="the template's FWHM, px "
                                                                                "(HOTPANTS). STDWeb: none")
    custom_template_gain: float | None = Field(None, gt=0, description="gain (e-/ADU) of a custom template "
                                                                        "(default: its header's GAIN; STDWeb: 10000)")
    custom_template_mask: Path | None = Field(None, description="a FITS mask of a custom template (nonzero = bad; "
                                                                "the template's own size). STDWeb: drawn per task")
    custom_template_saturation: float | None = Field(None, gt=0, description="saturation (ADU) of a custom "
                                                                              "template (default: its SATURATE)")

    # STDWeb parity: inspect and targets (docs/stdweb-settings.md)
    time: str | None = Field(
        None, description="observation (start) time overriding the header's, ISO (2026-03-01T03:00:00) or MJD; "
                          "recorded with time_source \"setting\". STDWeb: from the header")
    targets: list[str] = Field(
        default_factory=list,
        description="STDWeb's `target`: one target per item (or a text of lines): a name (Simbad via Sesame, then "
                    "TNS; cached under the cache folder), \"RA Dec\" in degrees or sexagesimal, \"x=100 y=200\" "
                    "pixels, optionally \"label= ...\". Empty: the header TARGET (or OBJECT, when it resolves). "
                    "STDWeb: header TARGET")
    header_target: bool = Field(
        True, description="with no `targets`, measure the header's TARGET (or OBJECT when it resolves to "
                          "coordinates) as the target, recorded with source \"header\". STDWeb: true")
    centroid_targets: bool = Field(
        False, description="centroid each target's position on the image before measuring it; the measured "
                           "position and its offset are recorded. STDWeb: false")
    mask_regions: list[tuple[int, int, int, int]] = Field(
        default_factory=list,
        description="custom mask rectangles [x0, x1, y0, y1]: 0-based pixels of the frame as read (before `crop`), "
                    "x0 <= x < x1, y0 <= y < y1; masked with the `custom` bit, nothing is detected there. "
                    "STDWeb: none (drawn per task)")
    mask_file: Path | None = Field(
        None, description="a FITS image of the frame's size (as read, or after `crop`): nonzero pixels are masked "
                          "with the `custom` bit. STDWeb: none")
    crop: str | tuple[int, int, int, int] | None = Field(
        None, description="keep only this part of the frame: a FITS section \"[x1:x2,y1:y2]\" (1-based, inclusive) "
                          "or [x0, x1, y0, y1] (0-based, end exclusive); the WCS follows. STDWeb: the crop action")
    inspect_bg: bool = Field(
        False, description="write the background and background-RMS maps (background.fits, background_rms.fits). "
                           "STDWeb: false")
    blind_match_center: str | None = Field(
        None, description="blind-match around this position instead of the header's pointing: \"RA Dec\" "
                          "(degrees or sexagesimal) or a name resolved like a target. STDWeb: none")
    blind_match_sr0: float = Field(
        2.0, gt=0, description="blind-match search radius (degrees) around the pointing; formerly "
                               "blind_radius_deg (still accepted). STDWeb: 2")
    blind_match_ps_lo: float | None = Field(
        None, gt=0, description="blind match: lowest pixel scale (″/px); unset: 0.8 × the instrument profile's "
                                "pixel scale, else STDWeb's 0.2. Formerly blind_scale_lower_arcsec (still accepted)")
    blind_match_ps_up: float | None = Field(
        None, gt=0, description="blind match: highest pixel scale (″/px); unset: 1.25 × the instrument profile's "
                                "pixel scale, else STDWeb's 4. Formerly blind_scale_upper_arcsec (still accepted)")
    # simple transients
    simple_mag_diff: float = 2.0
    simple_max_candidates: int = Field(100, ge=0)
    simple_bright_shape_cut_sn: float = 20.0
    skybot: bool = False
    cosmic_dilate: int = Field(2, ge=0, description="px; candidates on dilated cosmic-ray pixels are rejected")
    max_cutouts: int = Field(30, ge=0)
    # subtraction
    sub_method: Literal["auto", "sfft", "hotpants", "zogy"] = "auto"
    sub_mode: Literal["detection", "target"] = "detection"
    sub_size: int = Field(1000, ge=64)
    sub_overlap: int = Field(50, ge=0)
    sub_reproject: Literal["lanczos", "swarp"] = "swarp"
    sfft_kernel_poly_order: int = Field(0, ge=0, le=3)
    sfft_bg_poly_order: int = Field(0, ge=0, le=3)
    sfft_flux_poly_order: int = Field(0, ge=0, le=3)
    hotpants_exe: Path | None = None
    template_saturation_mag: float = 13.0
    dipole_test: bool = True
    cutout_radius: int = Field(15, ge=4)
    sub_detection_thresh: float = Field(3.0, gt=0)
    publish_images: bool = Field(False, description="also publish template, difference and error images")

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data):
        """Keys renamed for STDWeb parity: the former names are still accepted."""
        if isinstance(data, dict):
            for old, new in FORMER_PIPELINE_KEYS.items():
                if old in data:
                    data = dict(data)
                    value = data.pop(old)
                    if new in data and data[new] != value:
                        raise ValueError(f"{old} is the former name of {new}: give one of them")
                    data[new] = value
        return data

    @field_validator("targets", mode="before")
    @classmethod
    def _target_lines(cls, v):
        if isinstance(v, str):  # STDWeb's `target`: one per line
            return [line.strip() for line in v.splitlines() if line.strip()]
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v):
        if v is not None:
            parse_time_setting(v)
        return v

    @field_validator("crop")
    @classmethod
    def _crop(cls, v):
        if v is not None:
            parse_crop(v)
        return v

    @field_validator("mask_regions")
    @classmethod
    def _regions(cls, v):
        for r in v:
            if r[0] < 0 or r[2] < 0 or r[1] <= r[0] or r[3] <= r[2]:
                raise ValueError(f"a mask region is [x0, x1, y0, y1] with 0 <= x0 < x1 and 0 <= y0 < y1, got {list(r)}")
        return v

    @model_validator(mode="after")
    def _annulus(self):
        if self.blind_match_ps_lo and self.blind_match_ps_up and self.blind_match_ps_up <= self.blind_match_ps_lo:
            raise ValueError("blind_match_ps_up must be larger than blind_match_ps_lo")
        if self.rel_bg2 <= self.rel_bg1:
            raise ValueError("rel_bg2 must be larger than rel_bg1")
        from .positions import parse_center

        for key in ("simple_center", "filter_center"):
            try:
                parse_center(getattr(self, key))
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        unknown = sorted(set(self.hotpants_extra) - HOTPANTS_OPTIONS)
        if unknown:
            raise ValueError(f"hotpants_extra: unknown HOTPANTS option(s) {', '.join(unknown)}")
        return self


class CatalogSettings(Section):
    source: Literal["local", "vizier"] = "local"
    files: list[Path] = Field(default_factory=list)
    columns: dict[str, str] = Field(default_factory=dict, description="our name -> column in the file")
    vizier_catalog: str | None = None
    vizier_url: str | None = Field(None, description="a Vizier mirror: host name or full URL")
    transient_catalogs: list[str] = Field(default_factory=lambda: ["auto"],
                                          description="Vizier catalogues rejecting known objects")
    timeout_seconds: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    # STDWeb parity: target names (stdd/sources/names.py)
    sesame_url: str = Field("https://cds.unistra.fr/cgi-bin/nph-sesame",
                            description="CDS Sesame name resolver (Simbad, NED, VizieR) for target names")
    tns_url: str = Field("https://www.wis-tns.org", description="Transient Name Server, asked for names Sesame "
                                                             "does not know (/api/get/search, /api/get/object)")
    tns_bot_id: int | None = Field(None, description="TNS bot id (TNS answers bots only); unset: TNS not asked")
    tns_bot_name: str | None = Field(None, description="TNS bot name")
    tns_api_key_env: str = Field("TNS_API_KEY", description="environment variable holding the TNS bot's API key")


class TemplateSettings(Section):
    source: Literal["none", "local", "custom", "survey"] = "local"
    folder: Path | None = Path("var/templates")
    file: Path | None = None
    survey: Literal["auto", "ps1", "ls", "hips", "des", "decaps", "ztf", "2mass", "skymapper"] = "auto"
    hips: str | None = None
    timeout_seconds: float = Field(120.0, gt=0)
    min_overlap: float = Field(0.5, gt=0, le=1, description="local library: least fraction of the frame covered")
    own_build_hour_utc: int | None = Field(
        None, ge=0, le=23, description="build templates from this telescope's own frames into `folder` daily at "
                                       "this hour (UTC), as `stdd templates build` does; unset = only by hand")
    own_min_frames: int = Field(3, ge=1, description="own templates: fewest good frames a field needs")
    own_max_frames: int = Field(7, ge=1, description="own templates: most frames combined per field")
    own_max_fwhm_ratio: float = Field(
        1.5, ge=1.0, description="own templates: keep frames at most this much blurrier than the field's sharpest")


class SiteSettings(Section):
    name: str = "Observatory"
    lat: float = Field(0.0, ge=-90, le=90)
    lon: float = Field(0.0, ge=-180, le=360)
    elevation: float = 0.0
    min_altitude: float = Field(20.0, ge=0, le=90)
    max_sun_altitude: float = Field(-12.0, ge=-90, le=90)
    min_moon_separation: float = Field(10.0, ge=0, le=180, description="degrees between target and Moon")


class KafkaSettings(Section):
    enabled: bool = Field(True, description="consume GCN Kafka when alerts are enabled (false: drop folder only)")
    bootstrap_servers: str | None = None
    domain: str = "gcn.nasa.gov"
    client_id: str | None = None
    client_id_env: str = "GCN_CLIENT_ID"
    client_secret_env: str = "GCN_CLIENT_SECRET"
    client_secret_file: Path | None = None
    group_id: str = "stdd"
    security_protocol: str | None = Field(
        None, description="default: PLAINTEXT with bootstrap_servers, else gcn-kafka's SASL_SSL")
    config: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="extra librdkafka settings, passed as given")
    heartbeat_topic: str = "gcn.heartbeat"
    reconnect_backoff_max_seconds: float = Field(30.0, gt=0)
    topics: list[str] = Field(
        default_factory=lambda: [
            "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK",
            "gcn.classic.voevent.SWIFT_XRT_POSITION",
            "gcn.classic.voevent.FERMI_GBM_FLT_POS",
            "gcn.classic.voevent.FERMI_GBM_GND_POS",
            "gcn.classic.voevent.FERMI_GBM_FIN_POS",
            "gcn.classic.voevent.ICECUBE_ASTROTRACK_GOLD",
            "gcn.classic.voevent.ICECUBE_ASTROTRACK_BRONZE",
            "gcn.notices.swift.bat.guano",
            "gcn.notices.einstein_probe.wxt.alert",
            "gcn.notices.icecube.lvk_nu_track_search",
            "igwn.gwalert",
            "gcn.heartbeat",
        ]
    )


class PolicyRule(Section):
    missions: list[str] = Field(default_factory=lambda: ["*"])
    notice_types: list[str] = Field(default_factory=lambda: ["*"])
    roles: list[Literal["observation", "test", "mock", "control"]] = Field(
        default_factory=lambda: ["observation"]
    )
    max_error_radius_deg: float | None = Field(
        None, gt=0, description="90 % circle-equivalent radius; None means no limit")
    priority: int = 10
    require_visible: bool = True
    actions: list[str] = Field(default_factory=list)


class ActionSettings(Section):
    kind: Literal["exec", "webhook", "request_file"]
    command: list[str] | None = None
    url: str | None = None
    folder: Path | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    retry_backoff_seconds: float = Field(2.0, ge=0)
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers (webhook)")
    rerun_interrupted: bool = Field(
        True, description="run again, at the next start, an action that stdd's stop or crash cut short while it "
                          "ran (at-least-once); false marks it failed instead (at-most-once)")

    @model_validator(mode="after")
    def _needs(self):
        need = {"exec": "command", "webhook": "url", "request_file": "folder"}[self.kind]
        if getattr(self, need) in (None, []):
            raise ValueError(f"an action of kind {self.kind!r} needs {need!r}")
        return self


class AlertSettings(Section):
    enabled: bool = False
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    live_hours: float = Field(48.0, gt=0)
    visibility_window_hours: float = Field(12.0, gt=0)
    forced_photometry_max_radius_deg: float = Field(0.05, gt=0)
    credible_level: float = Field(0.9, gt=0, lt=1, description="skymap region kept as the alert's area")
    action_workers: int = Field(4, ge=1)
    drop_poll_seconds: float = Field(1.0, gt=0)
    drop_settle_seconds: float = Field(1.0, ge=0)
    rules: list[PolicyRule] = Field(default_factory=lambda: [PolicyRule()])
    actions: dict[str, ActionSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_actions(self):
        for i, rule in enumerate(self.rules):
            for name in rule.actions:
                if name not in self.actions:
                    raise ValueError(f"rules[{i}] names action {name!r}, which is not defined in alerts.actions")
        return self


class DaemonSettings(Section):
    """How the daemon watches itself (stdd/daemon/supervise.py, stdd/daemon/dbgate.py)."""

    loop_stall_seconds: float = Field(
        120.0, gt=0, description="a supervised loop (intake, dispatch, event pump, scheduler) that has not "
                                 "iterated for this long is stalled: /health says so and the systemd "
                                 "watchdog ping stops, so systemd restarts the service")
    db_busy_timeout_seconds: float = Field(
        5.0, gt=0, description="how long one database call waits for a lock held by another process before "
                               "it is retried (the daemon retries; nothing is dropped)")
    intake_retry_seconds: float = Field(
        3.0, gt=0, description="a file that could not be recorded (database locked, disk full) is tried "
                               "again after this long (doubling up to 20 s)")
    known_files_max: int = Field(
        100_000, ge=100, description="files remembered in memory as already seen (size and mtime); older "
                                     "ones are checked against the database when seen again")


CalibKind = Literal["bias", "dark", "flat"]


class MaxAgeDays(Section):
    """How far in time (days, either side) a master may be from the frame it calibrates."""

    bias: float = Field(30.0, gt=0)
    dark: float = Field(30.0, gt=0)
    flat: float = Field(30.0, gt=0)


class CalibrationSettings(Section):
    """Calibration masters and the calibrate stage (stdd/calib/, stdd/stages/calibrate.py).

    Unset `library`: no calibrate stage (unless `stdd process --calib LIBRARY`), and calibration
    frames arriving in the watched folders are recorded with their type but no master is built."""

    library: Path | None = Field(None, description="the calibration library folder (masters and index.json)")
    max_age_days: MaxAgeDays = Field(default_factory=MaxAgeDays)
    required: bool = Field(False, description="a frame missing a master it needs fails instead of a note")
    set_close_minutes: float = Field(
        10.0, gt=0, description="the daemon builds masters once no calibration frame has arrived for this long")
    build_hour_utc: int | None = Field(
        12, ge=0, le=23, description="daily build of whatever calibration frames are still pending; unset = only "
                                     "when a set closes")
    hold_lights_minutes: float = Field(
        30.0, ge=0, description="light frames arriving while calibration frames wait for their masters are held "
                                "back at most this long (0 = never held)")
    min_frames: int = Field(3, ge=1, description="fewer frames in a set still give a master, with a warning")
    sigma_clip: float = Field(3.0, gt=0, description="sigma clipping of the combination (both sides)")
    combine: Literal["median", "average"] = "median"
    temperature_band: float = Field(2.0, gt=0, description="°C: masters and frames within this are one group")
    hot_pixel_sigma: float = Field(6.0, gt=0, description="dark pixels this many σ above the median are hot")
    bad_flat_ratio: float = Field(0.2, gt=0, lt=1, description="flat pixels off their local median by more than "
                                                               "this fraction are bad (dead columns, dust cores)")
    flat_min_level: float = Field(1000.0, ge=0, description="ADU: flats below this (bias removed) are left out")
    flat_max_fraction: float = Field(0.8, gt=0, le=1, description="flats whose median is above this fraction of "
                                                                   "saturation are left out")


class RetentionSettings(Section):
    """How long things are kept. 0 keeps them forever. Frame and alert rows (the summaries) are
    always kept; the database keys prune the history behind them (stdd.store.retention)."""

    work_days: float = Field(7.0, ge=0)
    cache_days: float = Field(90.0, ge=0)
    summary_hour_utc: int = Field(12, ge=0, le=23)
    events_days: float = Field(30.0, ge=0, description="audit events (the events table) older than this are deleted")
    stage_runs_days: float = Field(
        30.0, ge=0, description="stage runs older than this are deleted (never those of a queued or running frame)")
    notices_days: float = Field(
        30.0, ge=0, description="the raw bytes of alert messages older than this are dropped (the row, its state "
        "and alert id stay)")


class SkyPortalSettings(Section):
    """Delivery to a SkyPortal instance (stdd/delivery/skyportal.py, docs/delivery.md)."""

    url: str | None = Field(None, description="base URL, e.g. https://fritz.science; unset = no SkyPortal delivery")
    token_file: Path | None = Field(None, description="file holding the API token (read at send time, never logged)")
    token_env: str = Field("STDD_SKYPORTAL_TOKEN", description="environment variable holding the API token "
                                                               "(used when token_file is unset)")
    instrument_id: int | None = Field(None, ge=1, description="SkyPortal instrument id of this telescope's camera")
    instrument_name: str | None = Field(None, description="or its name, looked up once (GET /api/instrument?name=); "
                                                          "`stdd delivery instruments` lists them")
    group_ids: list[int] = Field(default_factory=list, description="SkyPortal groups that get the data")
    filter_map: dict[str, str] = Field(
        default_factory=dict, description="stdd band -> SkyPortal bandpass, beside the built-in table "
                                          "(stdd/delivery/bands.py)")
    magsys: Literal["ab", "vega"] = Field("ab", description="magnitude system of the reported magnitudes")
    candidates: Literal["confirmed", "all", "none"] = Field(
        "confirmed", description="which transient candidates are posted (with their cutouts): those the candidate "
                                 "store confirms (`stdd.delivery.notify_confirmed_candidates`), every difference-"
                                 "image candidate of every frame, or none")
    match_radius_arcsec: float = Field(2.0, gt=0, description="a target or candidate is matched to an existing "
                                                              "SkyPortal source within this radius")
    filter_ids: list[int] = Field(default_factory=list, description="SkyPortal filter ids candidates pass "
                                                                    "(required by POST /api/candidates)")
    timeout_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _complete(self):
        if self.url:
            if self.instrument_id is None and not self.instrument_name:
                raise ValueError("instrument_id (or instrument_name) is required when url is set "
                                 "(SkyPortal's instrument of this camera)")
            if self.candidates != "none" and not self.filter_ids:
                raise ValueError("filter_ids is required when url is set and candidates are posted "
                                 "(POST /api/candidates needs them; or set candidates = \"none\")")
        return self


class TomSettings(Section):
    """Delivery to a TOM Toolkit instance (stdd/delivery/tom.py, docs/delivery.md)."""

    url: str | None = Field(None, description="base URL of the TOM, e.g. https://tom.example.org; unset = none")
    username: str | None = Field(None, description="TOM user (HTTP basic auth)")
    password_file: Path | None = Field(None, description="file holding the TOM user's password")
    password_env: str = Field("STDD_TOM_PASSWORD", description="environment variable holding the TOM password")
    token_file: Path | None = Field(None, description="file holding a REST framework token (instead of basic auth)")
    match_radius_arcsec: float = Field(2.0, gt=0, description="a target is matched by position within this")
    timeout_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _credentials(self):
        if self.url and not self.token_file and not self.username:
            raise ValueError("username (with password_file or password_env) or token_file is required when url is set")
        return self


NotifyEvent = Literal["candidates", "alert_acted", "daemon_trouble"]


class NotifyChannel(Section):
    """One notification channel: Apprise URLs (mailto://, slack://, matrix://, json://, ...)."""

    urls: list[str] = Field(default_factory=list, description="Apprise URLs; may hold ${ENV} references "
                                                              "(secrets stay out of the file)")
    events: list[NotifyEvent] = Field(default_factory=lambda: ["candidates", "alert_acted", "daemon_trouble"],
                                      description="what this channel is told about")
    max_per_window: int = Field(5, ge=1, description="messages at most per window; the excess is summarised "
                                                     "into one message when the window allows")
    window_minutes: float = Field(60.0, gt=0, description="the rate-limit window")


class DeliverySettings(Section):
    """Delivery of results and notifications: the outbox and its sender (stdd/delivery/, docs/delivery.md)."""

    skyportal: SkyPortalSettings = Field(default_factory=SkyPortalSettings)
    tom: TomSettings = Field(default_factory=TomSettings)
    notify: dict[str, NotifyChannel] = Field(default_factory=dict, description="notification channels by name")
    max_attempts: int = Field(20, ge=1, description="attempts before an item is marked failed (`stdd delivery "
                                                    "retry` queues it again)")
    backoff_seconds: float = Field(30.0, gt=0, description="wait after the first failed attempt; doubles")
    backoff_max_seconds: float = Field(3600.0, gt=0, description="the longest wait between two attempts")
    poll_seconds: float = Field(5.0, gt=0, description="how often the sender looks for due items")
    trouble_check_seconds: float = Field(60.0, gt=0, description="how often the daemon's health is checked for "
                                                                 "trouble worth a notification")
    keep_days: float = Field(30.0, ge=0, description="sent items older than this are deleted from the outbox "
                                                     "(0 = kept for ever; pending and failed ones always stay)")

    @property
    def enabled(self) -> bool:
        return bool(self.skyportal.url or self.tom.url or self.notify)


class Settings(Section):
    paths: PathsSettings = Field(default_factory=PathsSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    template: TemplateSettings = Field(default_factory=TemplateSettings)
    offline: bool = True
    site: SiteSettings = Field(default_factory=SiteSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    instruments_dir: Path = Path("config/instruments")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # where the settings came from: set by the loader, never a TOML key
    _source_file: Path | None = PrivateAttr(default=None)

    @property
    def source_file(self) -> Path | None:
        return self._source_file


class ProfileCalibration(Section):
    """What the calibrate stage does for one camera (the profile's `[calibration]` table)."""

    bias: bool = Field(True, description="subtract a master bias")
    dark: bool = Field(True, description="subtract a master dark")
    flat: bool = Field(True, description="divide by a master flat of the frame's band")
    bad_pixels: bool = Field(True, description="mask the bad pixels of the library's bad-pixel mask")
    dark_scaling: bool = Field(
        True, description="darks may be scaled by exposure time (bias-subtracted darks; a camera whose dark "
                          "frames carry the bias, or whose dark current is not linear, sets false: then only a "
                          "dark of the same exposure time is used)")
    required: bool | None = Field(None, description="a frame missing a master fails (default calibration.required)")
    max_age_days: MaxAgeDays | None = Field(None, description="default calibration.max_age_days")
    binning_keywords: list[str] = Field(default_factory=list, description="tried before XBINNING/YBINNING, CCDSUM, ...")
    readout_keywords: list[str] = Field(default_factory=list, description="tried before READOUTM, READMODE, ...")
    temperature_keywords: list[str] = Field(default_factory=list, description="tried before CCD-TEMP, CCDTEMP, ...")


class InstrumentProfile(Section):
    """One camera: what its headers do not say, or say wrongly."""

    name: str
    description: str = ""
    match: dict[str, str] = Field(default_factory=dict, description="header keyword -> glob on its value")
    gain: float | None = Field(None, gt=0)
    read_noise: float | None = Field(None, ge=0)
    saturation: float | None = Field(None, gt=0)
    pixel_scale_arcsec: float | None = Field(None, gt=0)
    filter_aliases: dict[str, str] = Field(default_factory=dict, description="header value -> band")
    trim: str | None = Field(None, description="FITS section kept, e.g. [1:2048,1:2048]; \"header\": TRIMSEC "
                                               "(else DATASEC)")
    overscan: str | None = Field(None, description="FITS section of the overscan, e.g. [2049:2080,1:2048]; "
                                                   "\"header\": BIASSEC")
    bad_pixel_mask: Path | None = None
    image_types: dict[str, CalibKind | Literal["light"]] = Field(
        default_factory=dict, description="header image-type value -> bias / dark / flat / light, beside the "
                                          "built-in aliases (stdd/calib/frametypes.py)")
    image_type_keywords: list[str] = Field(
        default_factory=list, description="header keywords holding the image type, tried first")
    calibration: ProfileCalibration = Field(default_factory=ProfileCalibration)
    pipeline: dict[str, object] = Field(default_factory=dict, description="pipeline overrides")

    @field_validator("trim", "overscan")
    @classmethod
    def _section(cls, v):
        if v is None or v == "header":
            return v
        import re

        if not re.fullmatch(r"\[\s*\d+\s*:\s*\d+\s*,\s*\d+\s*:\s*\d+\s*\]", v):
            raise ValueError(f"expected a FITS section like [1:2048,1:2048] (or \"header\": BIASSEC/TRIMSEC), "
                             f"got {v!r}")
        return v
