"""Usage objects in an OpenAI answer's bytes: where the first one begins, and the gateway's fields
spliced into one without re-serialising the rest.

A usage object is ``"usage"`` followed by ``:`` and ``{`` (with optional spaces between):
``USAGE_OBJECT``. An OpenAI stream that asks for usage (the gateway always does) carries
``"usage":null`` in every chunk and the object in its last chunk but one, so a search for
``"usage"`` lands on a null in every event before the one that counts; ``usage_object_at``
searches past the nulls in one pass (``_NOT_NULL``).
"""

from __future__ import annotations

import re

import orjson

__all__ = ["USAGE_OBJECT", "splice_usage_fields", "usage_object_at"]

USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_USAGE_KEY = b'"usage"'
_USAGE_COMPACT = b'"usage":{'
#: A ``"usage"`` not followed by ``:null``: every one that is cannot begin an object.
_NOT_NULL = re.compile(rb'"usage"(?!:null)')


def usage_object_at(blob: bytes, start: int = 0) -> int:
    """Where the first usage object (``USAGE_OBJECT``) at or after ``start`` begins in ``blob``, or -1.

    The first ``"usage"`` is found with ``bytes.find`` and checked by the pattern. Past a
    ``"usage"`` that is not an object (an OpenAI stream's nulls: one a chunk, and its events
    may come in one read), one regex search skips every ``"usage":null`` and stops at the
    next other ``"usage"``. Over OpenAI's JSON that search takes about the CPU time of one
    ``bytes.find`` (its loop on the first byte is branch-predictable; the skip loop of
    ``find`` and ``count`` mispredicts on JSON's quotes) though callgrind counts ~3x its
    instructions; the find-and-count proof it replaces took three passes (11.5 us against
    3.2 us for 10.5 KB on this machine)."""
    at = blob.find(_USAGE_KEY, start)
    if at < 0 or USAGE_OBJECT.match(blob, at) is not None:
        return at
    search, match = _NOT_NULL.search, USAGE_OBJECT.match
    found = search(blob, at + 1)
    while found is not None:
        at = found.start()
        if match(blob, at) is not None:
            return at
        found = search(blob, at + 1)
    return -1


def splice_usage_fields(raw: bytes, extra: dict) -> bytes | None:
    """``raw`` (a JSON object with one ``usage`` object) with ``extra`` added
    inside that object, without re-serialising the rest; None when the
    document has no single usage object to splice into.

    The usual answer names ``"usage"`` once, near its end, compactly
    (``"usage":{``): one count over the bytes, a search back from the end and a
    comparison find it, a third of the instructions of the pattern's searches;
    anything else takes the general path."""
    n = raw.count(_USAGE_KEY)
    if n == 1:
        at = raw.rfind(_USAGE_KEY)
        if raw.startswith(_USAGE_COMPACT, at):
            at += len(_USAGE_COMPACT)
        else:
            found = USAGE_OBJECT.match(raw, at)
            if found is None:
                return None
            at = found.end()
    else:
        start = usage_object_at(raw) if n else -1
        found = USAGE_OBJECT.match(raw, start) if start >= 0 else None
        if found is None or usage_object_at(raw, start + 7) >= 0:
            return None
        at = found.end()  # just after the usage object's "{"
    fields = orjson.dumps(extra)[1:-1]
    if not fields:
        return raw
    after = raw[at:at + 1]
    closes_at_once = after == b"}" or (after.isspace() and raw[at:at + 64].lstrip()[:1] == b"}")
    return raw[:at] + fields + (b"" if closes_at_once else b",") + raw[at:]
