"""Usage objects in an OpenAI answer's bytes: where the first one begins, and the gateway's fields
spliced into one without re-serialising the rest.

A usage object is ``"usage"`` followed by ``:`` and ``{`` (with optional spaces between):
``USAGE_OBJECT``. An OpenAI stream that asks for usage (the gateway always does) carries
``"usage":null`` in every chunk and the object in its last chunk but one, so the search
lands on a null in every event before the one that counts; ``usage_object_at`` checks the
first ones one by one and, past three, settles the rest by counting.
"""

from __future__ import annotations

import re

import orjson

__all__ = ["USAGE_OBJECT", "splice_usage_fields", "usage_object_at"]

USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_USAGE_KEY = b'"usage"'
_USAGE_COMPACT = b'"usage":{'
_USAGE_NULL = b'"usage":null'


def usage_object_at(blob: bytes, start: int = 0) -> int:
    """Where the first usage object (``USAGE_OBJECT``) at or after ``start`` begins in ``blob``, or -1.

    ``bytes.find`` skips through the bytes several times faster than the regex engine's
    search; the regex then only checks each ``"usage"`` it lands on. Past three that are not
    objects (an OpenAI stream's nulls, its events come in one read: one a chunk), the first
    compact object is the answer when the ``"usage"`` before it are all nulls, which two
    counts over those bytes prove (``_only_nulls_before``) instead of a search and a match
    a chunk."""
    find, match = blob.find, USAGE_OBJECT.match
    at = find(_USAGE_KEY, start)
    misses = 0
    while at >= 0:
        if match(blob, at) is not None:
            return at
        misses += 1
        if misses == 3:
            compact = find(_USAGE_COMPACT, at)
            if _only_nulls_before(blob, at, compact if compact >= 0 else len(blob)):
                return compact
        at = find(_USAGE_KEY, at + 6)  # (+6: the next may begin at this one's closing quote)
    return -1


def _only_nulls_before(blob: bytes, start: int, end: int) -> bool:
    """Every ``"usage"`` in ``blob[start:end]`` is followed by ``:null`` (so none there is an object).

    ``bytes.count`` counts occurrences that do not overlap: two ``"usage"`` overlap only when
    one starts at the other's closing quote (``"usage"usage"``), and then the first is followed
    by ``usage"``, neither a null nor an object; so each run of overlapping ones counts at least
    once and holds at most one null or object, and the two counts are equal only when there is
    no object. (A ``"usage"`` that ends past ``end`` overlaps the ``"usage":{`` there by its
    closing quote: followed by ``usage"``, not an object.)"""
    return blob.count(_USAGE_KEY, start, end) == blob.count(_USAGE_NULL, start, end)


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
