"""Commands from MQTT (`P/cmd/<verb>`, ICD §5): read, validated and answered, with no I/O.

`read` turns a command message into a `Command` (its JSON object and who sent it) or a
`Rejected` (why not: an unknown verb, over 64 KiB, not UTF-8, not a JSON object, a field of the
wrong type, a sender that is no name); `result` builds the `P/cmd/result` object for either.
`by` names the sender as far as it can be told: "mqtt:<who>" from the MQTT 5 user property
`by`, else the payload's `"by"`, else just "mqtt" (the broker's ACL decides who may publish
commands at all). Retained commands are refused by the sink before they get here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hullwatch.topics import COMMANDS, SEVERITIES

MAX_COMMAND_BYTES = 64 * 1024
REQUEST_ECHO_CHARS = 256  # how much of a command's payload is echoed on cmd/result
MAX_SENDER_CHARS = 64  # a sender's name (`by`)
ORIGIN = "mqtt"


@dataclass(frozen=True)
class Command:
    """A well-formed command: its verb, its JSON object and who sent it ("mqtt" or "mqtt:<who>")."""

    name: str
    obj: dict
    by: str
    text: str


@dataclass(frozen=True)
class Rejected:
    """A command refused before it ran: `kind` is the `error` code on cmd/result, `reason` says why."""

    kind: str
    reason: str


def read(name: str, raw: bytes, sender: str | None = None) -> Command | Rejected:
    """Check one command message (`sender`: the MQTT 5 user property `by`, if the message had one)."""
    if name not in COMMANDS:
        return Rejected("unknown_command", f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    if len(raw) > MAX_COMMAND_BYTES:
        return Rejected("too_large", f"payload of {len(raw)} bytes is over {MAX_COMMAND_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("not_utf8", f"payload is not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return Rejected("not_json", f"payload is not JSON ({str(exc)[:80]})")
    if not isinstance(obj, dict):
        return Rejected("not_object", f"payload must be a JSON object, not {type(obj).__name__}")
    problem = validate(name, obj) or (sender_problem(sender) if sender is not None else None)
    if problem:
        return Rejected("bad_fields", problem)
    who = sender if sender is not None else obj.get("by")
    return Command(name, obj, f"{ORIGIN}:{who}" if who else ORIGIN, text)


def retained_refusal(topic: str) -> Rejected:
    """The answer to a command that arrived retained: a stale `ack` must not acknowledge tomorrow's alarm."""
    return Rejected("retained", f"retained commands are refused (clear this one: mosquitto_pub -r -n -t {topic})")


def result(name: str, raw: bytes, obj: dict | None, outcome: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The `P/cmd/result` object: the outcome, the verb, the start of the request, its `id`, the time."""
    out: dict[str, Any] = {"command": name[:64]}
    out.update(outcome)
    out["ok"] = bool(outcome.get("ok", False))
    out["command"] = name[:64]
    out["request"] = echo(raw)
    if obj is not None and isinstance(obj.get("id"), str | int) and not isinstance(obj.get("id"), bool):
        out["id"] = obj["id"]  # a correlation id chosen by the sender, echoed back
    out["time"] = now
    return out


def rejection(name: str, raw: bytes, rejected: Rejected, now: float) -> dict[str, Any]:
    """The `P/cmd/result` object of a refused command."""
    return result(name, raw, None, {"ok": False, "error": rejected.kind, "message": rejected.reason}, now)


def echo(raw: bytes) -> str:
    """The start of a command's payload, as text, for cmd/result."""
    text = raw[: REQUEST_ECHO_CHARS * 4].decode("utf-8", "replace")
    if len(text) > REQUEST_ECHO_CHARS or len(raw) > REQUEST_ECHO_CHARS * 4:
        text = text[:REQUEST_ECHO_CHARS] + "…"
    return text


def user_property(properties: Any, name: str) -> str | None:
    """The value of an MQTT 5 user property (the last one of that name) of a message's properties, or None."""
    found = None
    for key, value in getattr(properties, "UserProperty", None) or ():
        if key == name:
            found = value
    return found


def sender_problem(who: object) -> str | None:
    """Why a sender's name (`by`) is not one, or None."""
    if not isinstance(who, str) or not who or len(who) > MAX_SENDER_CHARS or not who.isprintable():
        return f'"by" must name the sender: printable text of 1 to {MAX_SENDER_CHARS} characters'
    return None


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _positive_seconds(d: Any) -> bool:
    return not isinstance(d, bool) and isinstance(d, int | float) and math.isfinite(d) and d > 0


def validate(name: str, obj: dict) -> str | None:
    """Why a command object is malformed, or None if its fields have the right types."""
    if "by" in obj:
        problem = sender_problem(obj["by"])
        if problem:
            return problem

    def key() -> str | None:
        for field in ("alarm", "source", "severity"):
            if field not in obj:
                return f'missing "{field}" (or use {{"all": true}})' if name != "shelve" else f'missing "{field}"'
            if not _is_text(obj[field]):
                return f'"{field}" must be a non-empty string, not {json.dumps(obj[field])[:40]}'
        if obj["severity"] not in SEVERITIES:
            return f'"severity" must be one of {", ".join(SEVERITIES)}'
        return None

    if name in ("ack", "unshelve", "reset"):
        if "all" in obj:
            return None if obj["all"] is True else '"all" must be true'
        return key()
    if name == "shelve":
        err = key()
        if err:
            return err
        return None if _positive_seconds(obj.get("duration_s")) else '"duration_s" must be a positive number of seconds'
    if name == "maintenance":
        on = obj.get("on")
        if not isinstance(on, bool):
            return '"on" must be true or false'
        sources = obj.get("sources")
        if sources is not None and (not isinstance(sources, list) or not all(_is_text(s) for s in sources)):
            return '"sources" must be a list of non-empty strings'
        if "all" in obj and not isinstance(obj["all"], bool):
            return '"all" must be true or false'
        if on and not sources and obj.get("all") is not True:
            return 'maintenance needs "sources": [...] (volumes or sensors), or "all": true'
        if sources and obj.get("all") is True:
            return 'give "sources" or "all": true, not both'
        d = obj.get("duration_s")
        if d is not None and not _positive_seconds(d):
            return '"duration_s" must be a positive number of seconds'
        return None
    return f"unknown command {name!r}"
