"""`stdd process FILE...`: run the stages on files, one result folder per file (STDWeb's process.py).

Each FILE is copied into a work folder (`<out>/.work/<name>`, kept unless --clean-work: a rerun
starts from it), the stages run there, and the result (result.json, tables, regions, plots, logs)
is published atomically to `<out>/<name>/`. `--from STAGE` reruns a file already processed into
--out from that stage, with the earlier stages' products as they were and the previous result
kept as a version (`<out>/<name>.versions/run-N/`, stdd.result_versions); `-c` keys of the
per-frame sections are the frame's own settings, merged over the earlier run's and recorded in
result.json (`settings.frame_options`). A file that cannot be processed gives a failed result with
the reason, never a traceback. Exit 0 when every file is done, 1 when any failed, 2 for a usage or
configuration error (an unknown `-c` key, a missing profile, ...).
"""
from __future__ import annotations

import filecmp
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, config_path, echo_json


def settings_or_exit(ctx: click.Context, overrides: dict):
    """Settings for a command that runs the stages (stdd process, stdd stack --process)."""
    return _settings(ctx, overrides)


def _settings(ctx: click.Context, overrides: dict):
    """Settings from --config / $STDD_CONFIG / ./stdd.toml, or the defaults when there is no file."""
    from ..config import ConfigError, load_settings, settings_from_dict
    from ..config.load import apply_overrides, default_config_path

    path = config_path(ctx)
    try:
        if path or default_config_path().is_file():
            return load_settings(path, overrides=overrides)
        data = apply_overrides({}, overrides, "<defaults>") if overrides else {}
        return settings_from_dict(data, "-c" if overrides else "<defaults>", Path.cwd())
    except ConfigError as e:
        for line in e.errors:
            click.echo(f"config error: {line}", err=True)
        sys.exit(EXIT_USAGE)


def _name_for(path: Path, used: set[str]) -> str:
    name = path.name
    for suffix in (".gz", ".fz", ".bz2"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for suffix in (".fits", ".fit", ".fts"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    name = name or "frame"
    base, k = name, 2
    while name in used:
        name = f"{base}-{k}"
        k += 1
    used.add(name)
    return name


def _summary_line(name: str, res: dict, out: Path) -> str:
    if res.get("status") != "done":
        return f"{name}: failed: {res.get('error')}"
    parts = []
    if res.get("zp") is not None:
        parts.append(f"zp {res['zp']:.3f}±{(res.get('zp_err') or 0):.3f}")
    if res.get("mag_limit") is not None:
        parts.append(f"limit {res['mag_limit']:.2f}")
    if res.get("wcs_rms_arcsec") is not None:
        parts.append(f"wcs rms {res['wcs_rms_arcsec']:.2f}\"")
    for key, label in (("candidates_simple", "simple"), ("candidates_sub", "sub")):
        if res.get(key) is not None:
            parts.append(f"{len(res[key])} {label}")
    return f"{name}: done ({', '.join(parts)}) → {out}"


@dataclass
class FileJob:
    """One file of `stdd process`: its work folder (kept for reruns) and its result folder."""

    path: Path
    work: Path
    result_dir: Path

    def rerun_problem(self) -> str | None:
        """Why this file cannot be rerun from a stage (None: it can): its work folder must hold
        the earlier stages' products, made from these very bytes."""
        from ..pipeline import RESULT_FILE

        if not self.path.is_file():
            return f"{self.path}: no such file"
        originals = sorted(self.work.glob("original*"))
        if not originals or not (self.work / RESULT_FILE).is_file():
            return (f"{self.path} has no work folder {self.work} (not processed into this --out, or processed "
                    f"with --clean-work): run it without --from first")
        if not filecmp.cmp(self.path, originals[0], shallow=False):
            return f"{self.path} changed since it was processed into {self.result_dir}: run it without --from"
        return None

    def previous_options(self) -> dict:
        from ..pipeline import RESULT_FILE

        try:
            res = json.loads((self.work / RESULT_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return (res.get("settings") or {}).get("frame_options") or {}

    def run(self, settings, choice, names: list[str], frame_options: dict, rerun: bool = False) -> dict:
        """Process the file (or rerun it from names[0], its earlier options merged under the new
        ones); any problem becomes a failed result naming it."""
        from pydantic import ValidationError

        from ..config.frame_options import FrameOptionError, merge, validate
        from ..pipeline import RESULT_FILE, merge_results, prepare_folder, publish, run_chain, write_json_atomic
        from ..stages.base import StageResult, StageSettings

        def failed(reason: str) -> dict:
            self.work.mkdir(parents=True, exist_ok=True)
            res = merge_results({}, [names[0]], {names[0]: StageResult(stage=names[0], state="failed",
                                                                        error=reason)})
            write_json_atomic(self.work / RESULT_FILE, res)
            publish(self.work, self.result_dir)
            return json.loads((self.result_dir / RESULT_FILE).read_text())

        if rerun:
            frame_options = merge(self.previous_options(), frame_options)
            try:
                validate(frame_options, settings)
            except FrameOptionError as e:
                return failed(f"{names[0]}: the earlier run's options with these: {e}")
        else:
            if not self.path.exists():
                return failed(f"{names[0]}: no such file: {self.path}")
            if not self.path.is_file():
                return failed(f"{names[0]}: not a regular file: {self.path}")
            try:
                prepare_folder(self.path, self.work)
            except OSError as e:
                return failed(f"{names[0]}: cannot copy the file: {e.strerror or e}")
        # the frame's own pipeline keys win over the profile's; run_chain chooses the profile by
        # the header when neither --profile nor the folder did
        try:
            stage_settings = StageSettings.from_settings(settings, profiles=choice, frame_options=frame_options)
        except ValidationError as e:
            profs = ", ".join(p.name for p in choice.candidates())
            return failed(f"{names[0]}: -c settings conflict with instrument profile(s) {profs}: "
                          + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
        run_chain(self.work, stage_settings, steps=names)
        publish(self.work, self.result_dir, extra={"file": str(self.path)})
        return json.loads((self.result_dir / RESULT_FILE).read_text())


def split_overrides(texts, catalogs=(), template=None, targets=()) -> tuple[dict, dict]:
    """`-c` texts (and --catalog/--template/--target) → (frame options as given, global overrides).
    A key of a per-frame section (stdd.config.frame_options) is the frame's own setting, recorded
    in its result; any other key (offline, paths, ...) changes the settings of the whole run.
    Relative paths are made absolute here, against the current folder. Exits 2 on a bad -c."""
    from ..config.frame_options import FrameOptionError, path_fields, split_key
    from ..config.load import parse_override

    frame: dict = {}
    other: dict = {}
    for text in texts:
        try:
            k, v = parse_override(text)
        except ValueError as e:
            click.echo(f"config error: -c {text}: {e}", err=True)
            sys.exit(EXIT_USAGE)
        try:
            section, field = split_key(k)
        except FrameOptionError:
            other[k] = v
            continue
        if field in path_fields(section) and v is not None:
            v = [str(Path(x).resolve()) for x in v] if isinstance(v, list) else str(Path(str(v)).resolve())
        frame[f"{section}.{field}"] = v
    if catalogs:
        frame["catalog.source"] = "local"
        frame["catalog.files"] = [str(Path(c).resolve()) for c in catalogs]
    if template:
        frame["template.source"] = "custom"
        frame["template.file"] = str(Path(template).resolve())
    if targets:
        frame["pipeline.targets"] = list(targets)
    return frame, other


def frame_options_or_exit(raw: dict, settings) -> dict:
    """Normalised, validated frame options; a bad key or value exits 2 naming it."""
    from ..config.frame_options import FrameOptionError, normalize

    try:
        return normalize(raw, settings)
    except FrameOptionError as e:
        click.echo(f"config error: -c {e}", err=True)
        sys.exit(EXIT_USAGE)


def register(cli: click.Group) -> None:
    @cli.command("process")
    @click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--steps", help="Comma-separated stages to run (default: pipeline.steps): "
                                  "inspect,photometry,transients,subtraction.")
    @click.option("--from", "from_stage", help="Rerun from this stage on files already processed into --out: "
                                               "earlier stages' products are kept; the previous result is kept "
                                               "as a version (<name>.versions/run-N).")
    @click.option("--profile", help="Instrument profile: a name in instruments_dir or a .toml path (default: the "
                                    "one watch.profiles names for the file's folder, else the profile whose "
                                    "`match` fits the header, else pipeline.instrument).")
    @click.option("--catalog", "catalogs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Reference catalogue file (FITS, ECSV, Parquet, VOTable); repeatable. Sets catalog.source = local.")
    @click.option("--template", type=click.Path(dir_okay=False, path_type=Path),
                  help="Template image for subtraction. Sets template.source = custom.")
    @click.option("--target", "targets", multiple=True,
                  help="A target: a name, 'RA Dec' or 'x= y=' pixels; repeatable (sets pipeline.targets).")
    @click.option("--calib", "calib", type=click.Path(file_okay=False, path_type=Path),
                  help="Calibration library: run the calibrate stage first (sets calibration.library).")
    @click.option("-c", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a setting (a bare key is a [pipeline] key), e.g. -c sn=3 -c catalog.source=vizier. "
                       "pipeline, catalog and template keys are the frame's own and recorded in its result.")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("stdd-results"),
                  show_default=True, help="Folder receiving one result folder per file.")
    @click.option("--json", "as_json", is_flag=True,
                  help="Print the result.json (an object for one file, a list for several).")
    @click.option("--keep-work/--clean-work", default=True, show_default=True,
                  help="Keep the work folders (<out>/.work/NAME: the images and products a rerun with --from "
                       "starts from), or remove them once the result is published.")
    @click.pass_context
    def process(ctx, files, steps, from_stage, profile, catalogs, template, targets, calib, overrides, out,
                as_json, keep_work):
        """Run the stages on FILE... and write one result folder per file under --out."""
        from ..config.load import ConfigError
        from ..pipeline import STAGE_NAMES, select_steps
        from ..stages.profiles import load_profile, load_profiles

        frame_raw, other = split_overrides(overrides, catalogs, template, targets)
        if calib:
            if not Path(calib).is_dir():
                click.echo(f"error: --calib {calib}: no such folder", err=True)
                sys.exit(EXIT_USAGE)
            other["calibration.library"] = str(Path(calib).resolve())
        settings = _settings(ctx, other)
        frame_options = frame_options_or_exit(frame_raw, settings)
        for c in catalogs:
            if not Path(c).is_file():
                click.echo(f"error: --catalog {c}: no such file", err=True)
                sys.exit(EXIT_USAGE)
        if template and not Path(template).is_file():
            click.echo(f"error: --template {template}: no such file", err=True)
            sys.exit(EXIT_USAGE)
        try:
            names = select_steps(steps.split(",") if steps else settings.pipeline.steps)
        except ValueError as e:
            click.echo(f"error: --steps: {e}", err=True)
            sys.exit(EXIT_USAGE)
        if from_stage:
            if from_stage not in STAGE_NAMES:
                click.echo(f"error: --from: unknown stage {from_stage!r}; stages are {', '.join(STAGE_NAMES)}",
                           err=True)
                sys.exit(EXIT_USAGE)
            names = [n for n in names if STAGE_NAMES.index(n) >= STAGE_NAMES.index(from_stage)]
            if not names:
                click.echo(f"error: --from {from_stage}: not among the steps run", err=True)
                sys.exit(EXIT_USAGE)
        # the daemon's choice (stdd.stages.profiles): --profile, else watch.profiles by the file's folder,
        # else the header's match, else pipeline.instrument
        try:
            profiles = load_profiles(settings)
            explicit_profile = load_profile(settings, profile, "--profile") if profile else None
        except ConfigError as e:
            for line in e.errors:
                click.echo(f"config error: {line}", err=True)
            sys.exit(EXIT_USAGE)

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        jobs = []
        for f in files:
            fname = _name_for(Path(f), used)
            job = FileJob(Path(f), out / ".work" / fname, out / fname)
            if from_stage:
                problem = job.rerun_problem()
                if problem:
                    click.echo(f"error: --from {from_stage}: {problem}", err=True)
                    sys.exit(EXIT_USAGE)
            jobs.append(job)
        results = []
        failed = 0
        bar = click.progressbar(jobs, label="processing", file=sys.stderr, show_pos=True,
                                item_show_func=lambda j: j.path.name if j else "") if len(jobs) > 1 else None
        iterator = bar.__enter__() if bar else jobs
        try:
            for job in iterator:
                choice = profiles.choice_for(job.path, explicit_profile)
                res = job.run(settings, choice, names, frame_options, rerun=bool(from_stage))
                res = {"file": str(job.path), "result_dir": str(job.result_dir), **res}
                if res.get("status") != "done":
                    failed += 1
                results.append(res)
                if not keep_work:
                    shutil.rmtree(job.work, ignore_errors=True)
                if not as_json:
                    line = _summary_line(job.result_dir.name, res, job.result_dir)
                    if bar:
                        click.echo("", err=True)
                    click.echo(line)
        finally:
            if bar:
                bar.__exit__(None, None, None)
        if not keep_work:
            try:
                (out / ".work").rmdir()
            except OSError:
                pass
        if as_json:
            echo_json(results[0] if len(results) == 1 else results)
        sys.exit(EXIT_FAILURE if failed else EXIT_OK)
