"""`stdd process FILE...`: run the stages on files, one result folder per file (STDWeb's process.py).

Each FILE is copied into a work folder (`<out>/.work/<name>`, removed afterwards unless
--keep-work), the stages run there, and the result (result.json, tables, regions, plots, logs) is
published atomically to `<out>/<name>/`. A file that cannot be processed gives a failed result with
the reason, never a traceback. Exit 0 when every file is done, 1 when any failed, 2 for a usage or
configuration error (an unknown `-c` key, a missing profile, ...).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, config_path, echo_json


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


def register(cli: click.Group) -> None:
    @cli.command("process")
    @click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--steps", help="Comma-separated stages to run (default: pipeline.steps): "
                                  "inspect,photometry,transients,subtraction.")
    @click.option("--profile", help="Instrument profile: a name in instruments_dir or a .toml path (default: the "
                                    "one watch.profiles names for the file's folder, else the profile whose "
                                    "`match` fits the header, else pipeline.instrument).")
    @click.option("--catalog", "catalogs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Reference catalogue file (FITS, ECSV, Parquet, VOTable); repeatable. Sets catalog.source = local.")
    @click.option("--template", type=click.Path(dir_okay=False, path_type=Path),
                  help="Template image for subtraction. Sets template.source = custom.")
    @click.option("--calib", "calib", type=click.Path(file_okay=False, path_type=Path),
                  help="Calibration library: run the calibrate stage first (sets calibration.library).")
    @click.option("-c", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a setting (a bare key is a [pipeline] key), e.g. -c sn=3 -c catalog.source=vizier.")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("stdd-results"),
                  show_default=True, help="Folder receiving one result folder per file.")
    @click.option("--json", "as_json", is_flag=True,
                  help="Print the result.json (an object for one file, a list for several).")
    @click.option("--keep-work", is_flag=True, help="Keep the work folders (<out>/.work/NAME).")
    @click.pass_context
    def process(ctx, files, steps, profile, catalogs, template, calib, overrides, out, as_json, keep_work):
        """Run the stages on FILE... and write one result folder per file under --out."""
        from ..config.load import ConfigError, parse_override
        from ..pipeline import prepare_folder, publish, run_chain, select_steps
        from ..stages.base import StageSettings
        from ..stages.profiles import load_profile, load_profiles

        parsed = {}
        for text in overrides:
            try:
                k, v = parse_override(text)
            except ValueError as e:
                click.echo(f"config error: -c {text}: {e}", err=True)
                sys.exit(EXIT_USAGE)
            parsed[k] = v
        if catalogs:
            parsed["catalog.source"] = "local"
            parsed["catalog.files"] = [str(Path(c).resolve()) for c in catalogs]
        if calib:
            if not Path(calib).is_dir():
                click.echo(f"error: --calib {calib}: no such folder", err=True)
                sys.exit(EXIT_USAGE)
            parsed["calibration.library"] = str(Path(calib).resolve())
        if template:
            parsed["template.source"] = "custom"
            parsed["template.file"] = str(Path(template).resolve())
        settings = _settings(ctx, parsed)
        from ..config.settings import Settings

        pipeline_keys = [k.split(".", 1)[1] if k.startswith("pipeline.") else k for k in parsed
                         if k.startswith("pipeline.") or ("." not in k and k not in Settings.model_fields)]
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
        results = []
        failed = 0
        bar = click.progressbar(files, label="processing", file=sys.stderr, show_pos=True,
                                item_show_func=lambda f: f.name if f else "") if len(files) > 1 else None
        iterator = bar.__enter__() if bar else files
        try:
            for f in iterator:
                fname = _name_for(Path(f), used)
                work = out / ".work" / fname
                result_dir = out / fname
                choice = profiles.choice_for(Path(f), explicit_profile)
                res = _process_one(Path(f), work, result_dir, settings, choice, names,
                                   prepare_folder, run_chain, publish, StageSettings, pipeline_keys)
                res = {"file": str(f), "result_dir": str(result_dir), **res}
                if res.get("status") != "done":
                    failed += 1
                results.append(res)
                if not keep_work:
                    shutil.rmtree(work, ignore_errors=True)
                if not as_json:
                    line = _summary_line(fname, res, result_dir)
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


def _process_one(path, work, result_dir, settings, choice, names, prepare_folder, run_chain, publish,
                 StageSettings, pipeline_keys=()) -> dict:
    """Process one file; any problem becomes a failed result naming it."""
    import json

    from ..pipeline import RESULT_FILE, merge_results, write_json_atomic
    from ..stages.base import StageResult

    def failed(reason: str) -> dict:
        work.mkdir(parents=True, exist_ok=True)
        res = merge_results({}, [names[0]], {names[0]: StageResult(stage=names[0], state="failed", error=reason)})
        write_json_atomic(work / RESULT_FILE, res)
        publish(work, result_dir)
        return json.loads((result_dir / RESULT_FILE).read_text())

    if not path.exists():
        return failed(f"{names[0]}: no such file: {path}")
    if not path.is_file():
        return failed(f"{names[0]}: not a regular file: {path}")
    try:
        prepare_folder(path, work)
    except OSError as e:
        return failed(f"{names[0]}: cannot copy the file: {e.strerror or e}")
    from pydantic import ValidationError

    # explicit -c pipeline keys win over the profile's pipeline overrides; run_chain chooses the
    # profile by the header when neither --profile nor the folder did
    explicit = {k: getattr(settings.pipeline, k) for k in pipeline_keys}
    try:
        stage_settings = StageSettings.from_settings(settings, profiles=choice, **explicit)
    except ValidationError as e:
        profs = ", ".join(p.name for p in choice.candidates())
        return failed(f"{names[0]}: -c settings conflict with instrument profile(s) {profs}: "
                      + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
    run_chain(work, stage_settings, steps=names)
    publish(work, result_dir, extra={"file": str(path)})
    return json.loads((result_dir / RESULT_FILE).read_text())
