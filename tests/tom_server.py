"""A real TOM Toolkit server for the delivery tests: Django's development server running the
minimal site in tests/tom_site/, from the TOM venv (scripts/tom_venv.sh), on a free local port,
with a fresh SQLite database and one user."""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
USER, PASSWORD = "stdd", "tom-test-password"


def tom_python() -> Path | None:
    venv = Path(os.environ.get("STDD_TOM_VENV") or ROOT / ".venv-tom")
    python = venv / "bin" / "python"
    return python if python.exists() else None


class TomServer:
    def __init__(self, home: Path, port: int):
        self.home = Path(home)
        self.port = port
        self.python = tom_python()
        self.env = {**os.environ, "STDD_TOM_HOME": str(self.home), "DJANGO_SETTINGS_MODULE": "tom_site.settings",
                    "PYTHONPATH": str(TESTS), "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _django(self, *args) -> None:
        subprocess.run([str(self.python), "-m", "django", *args], env=self.env, check=True, capture_output=True,
                       timeout=300)

    def start(self) -> "TomServer":
        self.home.mkdir(parents=True, exist_ok=True)
        self._django("migrate", "-v0")
        self._django("createsuperuser", "--noinput", "--username", USER, "--email", "stdd@example.org")
        self.log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen([str(self.python), "-m", "django", "runserver", f"127.0.0.1:{self.port}",
                                      "--noreload"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/api/", timeout=2)
                return self
            except urllib.error.HTTPError:
                return self  # answering (401/403): up
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("the TOM server exited:\n" + (self.home / "server.log").read_text()[-2000:])
                time.sleep(0.3)
        raise RuntimeError("the TOM server did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
