"""The daemon's stacking job: closed sequences of done frames (stdd.stack.sequences) stacked in a
child process (numpy and SWarp must not share the daemon's GIL) and queued as a new frame with the
highest priority of its inputs (`[stack]`, docs/stacking.md).

Crash safety: a sequence is keyed by its frames' ids; the stack file is written under that key
(`var/stacks/stack-<key>.fits`, atomically), then submitted, then recorded (`stacks` table, unique
key) in one transaction with nothing else. A crash before the record: the next run stacks the same
frames into the same file again and the submit finds the frame already recorded (same bytes) — one
stack per sequence. Inputs are the frames' calibrated images (`image.fits` in their work folders,
with the refined WCS `image.wcs`), scaled by their zero points."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..stack.sequences import closed_sequences, key_of

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("stdd.daemon")
LOOKBACK_S = 3 * 86400.0


def stack_child(inputs: list[str], out: str, method: str, subtract_bg: bool, mask_cosmics: bool,
                zps: list[float | None], tmpdir: str) -> dict:
    """Run in a child process: the stack itself."""
    from ..stack import stack

    return stack([Path(p) for p in inputs], Path(out), method=method, subtract_bg=subtract_bg,
                 mask_cosmics=mask_cosmics, zps=zps, tmpdir=Path(tmpdir), log=lambda m: None)


class Stacker:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    def _candidates(self) -> tuple[list[dict], set[int]]:
        db = self.d.db
        rows = db.query("SELECT * FROM frames WHERE state = 'done' AND finished_at > ? AND (kind IS NULL OR kind = "
                        "'light') ORDER BY id", (time.time() - LOOKBACK_S,))
        stacked: set[int] = set()
        for r in db.query("SELECT inputs FROM stacks"):
            stacked.update(json.loads(r["inputs"]))
        stack_dir = str(self.d.settings.paths.var / "stacks")
        out = []
        for r in rows:
            if r["id"] in stacked or str(r["path"]).startswith(stack_dir):
                continue
            for key in ("alert_ids", "options"):
                if isinstance(r.get(key), str):
                    try:
                        r[key] = json.loads(r[key])
                    except ValueError:
                        r[key] = None
            out.append(r)
        return out, stacked

    def _known(self, key: str) -> bool:
        return self.d.db.query_one("SELECT 1 AS x FROM stacks WHERE key = ?", (key,)) is not None

    def _record(self, key: str, frame_id: int, inputs: list[int], path: str) -> None:
        with self.d.db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO stacks (key, frame_id, inputs, path, created_at) VALUES (?, ?, ?, ?, ?)",
                         (key, frame_id, json.dumps(inputs), path, time.time()))

    async def run(self) -> list[dict]:
        """Stack every closed sequence not stacked yet; returns what was queued."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        d, s = self.d, self.d.settings
        if not s.stack.enabled:
            return []
        rows, _ = await d.gate.run(self._candidates)
        made = []
        for seq in closed_sequences(rows, s.stack, time.time()):
            key = key_of(seq)
            if await d.gate.run(self._known, key):
                continue
            inputs = []
            for f in seq:
                img = Path(f["work_dir"] or "") / "image.fits"
                inputs.append(str(img) if f.get("work_dir") and img.is_file() else None)
            if any(p is None for p in inputs):
                log.warning("stack %s: the images of some frames are gone (work folders removed); not stacked", key)
                continue
            zps = [f.get("zp") for f in seq]
            out = s.paths.var / "stacks" / f"stack-{key}.fits"
            tmp = s.paths.var / "stacks" / f".tmp-{key}"
            tmp.mkdir(parents=True, exist_ok=True)
            loop = asyncio.get_running_loop()
            try:
                with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                    rec = await loop.run_in_executor(ex, stack_child, inputs, str(out), s.stack.method,
                                                     s.stack.subtract_bg, s.stack.mask_cosmics,
                                                     zps if all(z is not None for z in zps) else None, str(tmp))
            except Exception as e:  # noqa: BLE001 — one sequence that cannot be stacked does not stop the others
                why = f"{type(e).__name__}: {e}"
                log.error("stack %s of frames %s failed: %s", key, [f["id"] for f in seq], why)
                await d.record_event("stack.failed", f"frames {[f['id'] for f in seq]}: {why}", level="ERROR")
                continue
            finally:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            prio = max(int(f.get("priority") or 0) for f in seq)
            frame = await d.control.submit(out, priority=prio)
            await d.gate.run(self._record, key, frame["id"], [f["id"] for f in seq], str(out))
            text = (f"{len(seq)} frames {[f['id'] for f in seq]} stacked ({rec['method']}, {rec['exptime_total']:g} s) "
                    f"→ frame {frame['id']}, priority {prio}")
            log.info("stack: %s", text)
            await d.record_event("stack.queued", text, frame_id=frame["id"],
                                 data={"key": key, "inputs": [f["id"] for f in seq], "path": str(out)})
            made.append({"key": key, "frame_id": frame["id"], "inputs": [f["id"] for f in seq], "priority": prio})
        return made
