"""Object names to coordinates: CDS Sesame (Simbad, NED, VizieR), then the Transient Name Server.

Design note: STDWeb resolves target names through Simbad and then TNS. Here both are asked through
their published HTTP APIs (Sesame's XML answer, `<base>/-ox/SNV?<name>`; TNS's bot API,
`POST <base>/api/get/search` then `/api/get/object` with the `tns_marker` User-Agent), with
configurable base URLs so that tests run against local stand-ins. Every answer is kept on disk under
the cache folder (`names/`), one small JSON file per name, so a name resolved once resolves again
offline. Offline and not cached is an outcome ("offline"), never an exception; so is "not found".
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .cache import DiskCache, key_of

TNS_NAME = re.compile(r"^\s*(?:(?:SN|AT|TDE|FRB|Kilonova|KN)\s*)?(\d{4}[a-zA-Z]{1,4})\s*$", re.IGNORECASE)


@dataclass
class Resolution:
    """`ra`, `dec` in degrees when resolved; `outcome` says how (or why not), for the record."""

    name: str
    ra: float | None
    dec: float | None
    outcome: str  # "sesame", "tns", "cached (sesame)", "offline", "not found", "failed: ..."
    label: str | None = None  # the service's own name for the object

    @property
    def ok(self) -> bool:
        return self.ra is not None


def resolve(name: str, catalog, *, offline: bool, cache_dir: Path, timeout: float | None = None) -> Resolution:
    """Resolve `name` with `catalog`'s services (CatalogSettings: sesame_url, tns_*), cache first."""
    cache = DiskCache(Path(cache_dir), "names")
    key = key_of("name", name.strip().lower())
    hit = cache.get(key, ".json")
    if hit is not None:
        d = json.loads(hit.read_text())
        return Resolution(name, d["ra"], d["dec"], f"cached ({d['service']})", d.get("label"))
    if offline:
        return Resolution(name, None, None, "offline")
    timeout = timeout or float(getattr(catalog, "timeout_seconds", 30.0))
    problems = []
    found = None
    for service, ask in (("sesame", _sesame), ("tns", _tns)):
        try:
            found = ask(name, catalog, timeout)
        except (OSError, ValueError, KeyError, ET.ParseError) as e:  # network, HTTP, malformed answer
            problems.append(f"{service}: {type(e).__name__}: {e}")
            continue
        if found is not None:
            break
    if found is None:
        return Resolution(name, None, None, f"failed: {'; '.join(problems)}" if problems else "not found")
    ra, dec, label = found

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps({"name": name, "ra": ra, "dec": dec, "service": service, "label": label}))

    cache.write(key, ".json", write)
    return Resolution(name, ra, dec, service, label)


def _sesame(name: str, catalog, timeout: float):
    url = f"{catalog.sesame_url.rstrip('/')}/-ox/SNV?{urllib.parse.quote(name.strip())}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        root = ET.fromstring(r.read())
    for res in root.iter("Resolver"):
        ra, dec = res.findtext("jradeg"), res.findtext("jdedeg")
        if ra is not None and dec is not None:
            return float(ra) % 360.0, float(dec), res.findtext("oname")
    return None


def _tns(name: str, catalog, timeout: float):
    m = TNS_NAME.match(name)
    key = os.environ.get(catalog.tns_api_key_env or "", "")
    if m is None or catalog.tns_bot_id is None or not key:
        return None  # not a TNS designation, or no bot to ask as
    objname = m.group(1)
    found = _tns_post(catalog, "search", {"objname": objname}, key, timeout)
    rows = found if isinstance(found, list) else found.get("reply", [])
    if not rows:
        return None
    objname = rows[0].get("objname", objname)
    obj = _tns_post(catalog, "object", {"objname": objname, "photometry": "0", "spectra": "0"}, key, timeout)
    if isinstance(obj, dict) and "reply" in obj:
        obj = obj["reply"]
    if not obj or obj.get("radeg") is None:
        return None
    label = f"{obj.get('name_prefix') or ''}{obj.get('objname', objname)}".strip()
    return float(obj["radeg"]) % 360.0, float(obj["decdeg"]), label


def _tns_post(catalog, what: str, data: dict, key: str, timeout: float):
    marker = json.dumps({"tns_id": catalog.tns_bot_id, "type": "bot", "name": catalog.tns_bot_name or ""})
    body = urllib.parse.urlencode({"api_key": key, "data": json.dumps(data)}).encode()
    req = urllib.request.Request(f"{catalog.tns_url.rstrip('/')}/api/get/{what}", data=body, method="POST",
                                 headers={"User-Agent": f"tns_marker{marker}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        answer = json.loads(r.read())
    if int(answer.get("id_code", 200)) != 200:
        raise ValueError(f"TNS {what}: {answer.get('id_code')} {answer.get('id_message')}")
    return answer.get("data") or {}
