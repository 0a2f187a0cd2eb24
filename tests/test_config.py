"""Typed settings: validation, error messages, path resolution, the CLI's config commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stdd.config import ConfigError, load_settings
from stdd.config.load import parse_override

ROOT = Path(__file__).resolve().parents[1]


def stdd(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "stdd", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)


def test_default_config_is_valid_and_paths_resolve():
    s = load_settings(ROOT / "stdd.toml")
    assert s.paths.incoming == [ROOT / "var" / "incoming"]
    assert s.paths.database == ROOT / "var" / "stdd.sqlite"
    assert s.http.host == "127.0.0.1" and s.http.port == 8754
    assert s.offline is True and s.alerts.enabled is False
    # STDWeb's defaults
    assert (s.pipeline.rel_aper, s.pipeline.rel_bg1, s.pipeline.rel_bg2) == (1.0, 5.0, 7.0)
    assert s.pipeline.sn == 5.0 and s.pipeline.cat_limit == 20.0 and s.pipeline.spatial_order == 2
    assert s.pool.effective_workers == (os.cpu_count() or 1)


def test_relative_paths_resolve_against_the_config_folder(config_file, tmp_path):
    path = config_file('[paths]\nresults = "out/res"\nincoming = ["cam1", "/abs/cam2"]\n')
    s = load_settings(path)
    assert s.paths.results == tmp_path / "out" / "res"
    assert s.paths.incoming == [tmp_path / "cam1", Path("/abs/cam2")]
    assert s.paths.work == tmp_path / "var" / "work"


def test_empty_config_takes_every_default(config_file):
    s = load_settings(config_file(""))
    assert s.pipeline.steps == ["inspect", "photometry", "transients", "subtraction"]


@pytest.mark.parametrize("text, needle", [
    ("[nosuch]\na = 1\n", "nosuch: unknown key"),
    ("[pool]\nworkerz = 2\n", "pool.workerz: unknown key"),
    ("[pool]\nworkers = 'many'\n", "pool.workers: expected an integer, got 'many'"),
    ("[http]\nport = 70000\n", "http.port"),
    ("[watch]\nafter_success = 'shred'\n", "watch.after_success"),
    ("[pipeline]\nsn = 'x'\n", "pipeline.sn: expected a number"),
    ("[pipeline]\nrel_bg1 = 7\nrel_bg2 = 5\n", "rel_bg2 must be larger"),
    ("offline = 'maybe'\n", "offline: expected true or false"),
    ("[[alerts.rules]]\nactions = ['ghost']\n", "ghost"),
    ("[pool\n", "not valid TOML"),
])
def test_bad_values_name_file_key_and_expectation(config_file, text, needle):
    path = config_file(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = "\n".join(err.value.errors)
    assert needle in message
    assert str(path) in message


def test_every_error_is_reported_at_once(config_file):
    with pytest.raises(ConfigError) as err:
        load_settings(config_file("bogus = 1\n[pool]\nworkers = 'x'\nfoo = 2\n"))
    assert len(err.value.errors) == 3


def test_overrides_are_validated(config_file):
    path = config_file("")
    s = load_settings(path, overrides=dict([parse_override("sn=3"), parse_override("pool.workers=4")]))
    assert s.pipeline.sn == 3.0 and s.pool.workers == 4
    with pytest.raises(ConfigError, match="pipeline.no_such_key"):
        load_settings(path, overrides=dict([parse_override("no_such_key=1")]))
    assert parse_override("filter=r") == ("filter", "r")
    with pytest.raises(ValueError):
        parse_override("novalue")


def test_cli_config_check_and_show(tmp_path, config_file):
    assert stdd("config", "check", str(ROOT / "stdd.toml")).returncode == 0
    bad = config_file("[pool]\nworkers = 1.5\n[extra]\n")
    r = stdd("config", "check", str(bad))
    assert r.returncode == 2
    assert "pool.workers" in r.stderr and "extra: unknown key" in r.stderr
    r = stdd("--config", str(ROOT / "stdd.toml"), "config", "show", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for section, key in [("paths", "incoming"), ("paths", "results"), ("http", "host"), ("http", "port"),
                         ("http", "token_file")]:
        assert key in data[section]
    assert data["paths"]["results"] == str(ROOT / "var" / "results")
    # STDD_CONFIG is the default config location; a broken one is a usage error (2)
    r = stdd("config", "show", env={"STDD_CONFIG": str(bad)})
    assert r.returncode == 2 and "pool.workers" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = stdd("config", "show", cwd=empty, env={"STDD_CONFIG": ""})
    assert r.returncode == 2 and "not found" in r.stderr


def test_cli_version_and_usage_errors():
    r = stdd("--version")
    assert r.returncode == 0 and "stdd" in r.stdout
    assert stdd("no-such-command").returncode == 2


def test_instrument_profiles_in_config_are_valid():
    r = stdd("config", "check", str(ROOT / "stdd.toml"))
    assert r.returncode == 0, r.stderr
