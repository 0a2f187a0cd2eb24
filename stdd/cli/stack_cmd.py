"""`stdd stack FILE... --out DIR`: stack frames of one field, then (with --process) run the stages
on the stack like any frame, with cutouts of its candidates from each input."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, echo_json


def register(cli: click.Group) -> None:
    @cli.command("stack")
    @click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                  help="Folder for the stack (stack.fits, stack.json) and, with --process, its result.")
    @click.option("--method", type=click.Choice(["sum", "clipped_mean", "median"]), default="sum", show_default=True,
                  help="How the aligned inputs are combined (STDWeb's default: sum).")
    @click.option("--no-subtract-bg", is_flag=True, help="Keep the inputs' backgrounds (default: removed).")
    @click.option("--mask-cosmics", is_flag=True, help="Mask cosmic rays in each input first.")
    @click.option("--results", type=click.Path(file_okay=False, exists=True, path_type=Path),
                  help="A `stdd process --out` folder holding the inputs' results: scale them to a common zero "
                       "point (else by exposure time).")
    @click.option("--name", default="stack", show_default=True, help="File name of the stack (without .fits).")
    @click.option("--process", "do_process", is_flag=True, help="Then run the stages on the stack.")
    @click.option("--catalog", "catalogs", multiple=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--template", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("-c", "--set", "overrides", multiple=True, metavar="KEY=VALUE")
    @click.option("--json", "as_json", is_flag=True, help="Print the record as JSON (`path`: the stacked FITS).")
    @click.pass_context
    def stack_cmd(ctx, files, out, method, no_subtract_bg, mask_cosmics, results, name, do_process, catalogs,
                  template, overrides, as_json):
        """Stack FILE... (frames of one field) into OUT/NAME.fits."""
        from ..stack import StackError, stack
        from .process_cmd import FileJob, frame_options_or_exit, settings_or_exit, split_overrides

        if len(files) < 2:
            click.echo("error: stacking needs at least two files", err=True)
            sys.exit(EXIT_USAGE)
        zps = None
        if results:
            zps = []
            for f in files:
                stem = f.name.split(".")[0]
                try:
                    zps.append(json.loads((results / stem / "result.json").read_text()).get("zp"))
                except (OSError, ValueError):
                    zps.append(None)
            if any(z is None for z in zps):
                click.echo(f"note: not every input has a zero point in {results}: scaled by exposure time", err=True)
                zps = None
        out.mkdir(parents=True, exist_ok=True)
        tmpdir = out / ".tmp"
        tmpdir.mkdir(exist_ok=True)
        try:
            record = stack(list(files), out / f"{name}.fits", method=method, subtract_bg=not no_subtract_bg,
                           mask_cosmics=mask_cosmics, zps=zps, tmpdir=tmpdir,
                           log=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)))
        except StackError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_FAILURE)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        (out / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
        code = EXIT_OK
        if do_process:
            from ..stack.input_cutouts import input_cutouts
            from ..stages.profiles import load_profiles

            frame_raw, other = split_overrides(overrides, catalogs, template)
            settings = settings_or_exit(ctx, other)
            options = frame_options_or_exit(frame_raw, settings)
            profiles = load_profiles(settings)
            job = FileJob(Path(record["path"]), out / ".work" / name, out / name)
            res = job.run(settings, profiles.choice_for(job.path), _steps(settings), options)
            if res.get("status") == "done":
                cut = input_cutouts(res, record["inputs"], job.result_dir)
                _add_to_result(job.result_dir, {"stack": {k: v for k, v in record.items() if k != "inputs"},
                                                "stack_inputs": [r["name"] for r in record["inputs"]],
                                                "candidates_input_cutouts": cut})
            else:
                code = EXIT_FAILURE
            record["result_dir"] = str(job.result_dir)
            record["result"] = json.loads((job.result_dir / "result.json").read_text())
        if as_json:
            echo_json(record)
        else:
            click.echo(f"stacked {record['n']} frames ({method}) → {record['path']}: gain {record['gain']:.3f}, "
                       f"exposure {record['exptime_total']:g} s, mid {record['time_mid']}")
            if do_process:
                r = record["result"]
                click.echo(f"processed: {r.get('status')} {r.get('error') or ''}".rstrip()
                           + (f", limit {r['mag_limit']:.2f}" if r.get("mag_limit") else ""))
        sys.exit(code)


def _steps(settings):
    from ..pipeline import select_steps

    return select_steps(settings.pipeline.steps)


def _add_to_result(result_dir: Path, extra: dict) -> None:
    from ..pipeline import write_json_atomic

    path = result_dir / "result.json"
    data = json.loads(path.read_text())
    data.update(extra)
    data["products"] = list(data.get("products") or []) + [c["file"] for c in extra.get("candidates_input_cutouts", [])]
    write_json_atomic(path, data)
