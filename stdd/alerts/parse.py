"""`parse_notice`: bytes from Kafka or a file → one normalised `Alert`, whatever the format.

Dispatch is by content, not by topic, so a notice dropped as a file reads the same as one
from Kafka; the topic (or a file name) is only a hint for notices that do not name
themselves (classic JSON, text). Anything unreadable raises `NoticeError` with the reason.
"""
from __future__ import annotations

import json

from . import gcn
from .binary_notices import parse_binary_notice
from .gwalert import parse_gwalert
from .json_notices import parse_json_notice
from .notice import Alert, NoticeError
from .text_notices import looks_like_text_notice, parse_text_notice
from .voevent import parse_voevent

#: the heartbeat topic carries ~1 message a second; it is a control message, never an alert
HEARTBEAT_TOPIC = "gcn.heartbeat"
MAX_NOTICE_BYTES = 64 * 1024 * 1024


def parse_notice(raw: bytes, topic: str | None = None, *, hint: str | None = None,
                 credible_level: float = 0.9) -> Alert:
    """Parse one notice. `topic`: the Kafka topic if known; `hint`: e.g. the file name."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise NoticeError(f"a notice is bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_NOTICE_BYTES:
        raise NoticeError(f"notice of {len(raw)} bytes is larger than {MAX_NOTICE_BYTES}")
    if topic == HEARTBEAT_TOPIC:
        alert = Alert(id=f"heartbeat:{_heartbeat_time(raw) or ''}", mission="GCN", notice_type="HEARTBEAT",
                      role="control", role_reason="gcn.heartbeat", format="control", topic=topic,
                      alert_type="control")
        alert.created = _heartbeat_time(raw)
        return alert
    text = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        raise NoticeError("empty notice")
    if text[:1] == b"<":
        alert = parse_voevent(text, topic)
    elif text[:1] in (b"{", b"["):
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise NoticeError(f"not valid JSON: {e}") from None
        if isinstance(data, dict) and "superevent_id" in data:
            alert = parse_gwalert(data, raw, topic)
        else:
            alert = parse_json_notice(data, raw, topic, hint)
    elif len(raw) == 160 and topic is None or (topic or "").startswith("gcn.classic.binary."):
        alert = _classic_binary(raw, topic)
    else:
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            raise NoticeError("not a notice: binary data of unknown format") from None
        if not looks_like_text_notice(decoded):
            raise NoticeError("not a notice: neither VOEvent XML, JSON nor a GCN text notice")
        alert = parse_text_notice(text, topic)
    alert.credible_level = credible_level
    if not alert.id:
        raise NoticeError("notice has no identifier")
    return alert


def _heartbeat_time(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return gcn.iso_utc(data.get("alert_datetime")) if isinstance(data, dict) else None


def _classic_binary(raw: bytes, topic: str | None) -> Alert:
    """Classic 160-byte socket packets: control packets and the science layouts `binary_notices` decodes."""
    return parse_binary_notice(raw, topic)
