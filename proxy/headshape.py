"""An answer's head written from a dict of headers as aiohttp's serializer writes it, without it.

aiohttp serializes a head a character at a time (``_serialize_headers``, checking each for a
control character): ~1.3 us for a gateway's ~15 headers. The same plugins add the same names in
the same order, so per tuple of names (a dict's keys) the head's text is kept here with the names
written in and a slot for each value (``Shape``); a head is then its values checked for control
characters in one pass (``plain_values``), slotted in, and the lines aiohttp adds after them
(``Shape.head``). Used by ``wholeanswer.send_answer`` (a whole JSON answer) and
``sse_start.start_sse`` (a chunked stream's head).

What this writes is what ``_serialize_headers`` writes only for names and values aiohttp would
write as they are: printable ASCII (a TAB allowed in values), names that are ``str``. Anything
else (``shape_of`` None, ``plain_values`` False): the caller takes aiohttp's way, which writes
non-ASCII as UTF-8 and refuses control characters with its ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from aiohttp import hdrs
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

__all__ = ["MAX_SHAPES", "SERVER_LINE", "Shape", "plain_values", "shape_and_values", "shape_of"]

#: Distinct name orders kept (a gateway's answers use a handful; past this the cache starts over).
MAX_SHAPES = 256

#: The ``Server`` line aiohttp adds when none was given.
SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n"

#: Each byte to itself but those aiohttp refuses in a head (a control character other than TAB, DEL) to NUL.
_CONTROL_TO_NUL = bytes(0 if (c < 0x20 and c != 0x09) or c == 0x7F else c for c in range(256))

_TYPE, _DATE, _SERVER, _CONNECTION = (n.lower() for n in (hdrs.CONTENT_TYPE, hdrs.DATE, hdrs.SERVER, hdrs.CONNECTION))
#: Names whose presence sends the answer through aiohttp (it would refuse them, or take another branch).
_REFUSED = frozenset(n.lower() for n in (hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING))


class Shape:
    """A tuple of names' head: ``pieces`` (the names written in, None where each value goes)
    and which of the headers aiohttp adds were given (``content_type``, ``date``, ``server``,
    ``connection``: a name of any case)."""

    __slots__ = ("pieces", "content_type", "date", "server", "connection")

    def __init__(self, pieces: list[Any], names: set[str]) -> None:
        self.pieces = pieces
        self.content_type = _TYPE in names
        self.date = _DATE in names
        self.server = _SERVER in names
        self.connection = _CONNECTION in names

    def add_defaults(self, headers: MutableMapping[str, str]) -> str:
        """Add to ``headers`` what aiohttp adds to an answer that lacks them, in its order
        (``Content-Type``, ``Date``, ``Server``; ``Connection`` is the caller's): their lines."""
        tail = ""
        if not self.content_type:
            headers[hdrs.CONTENT_TYPE] = "application/octet-stream"
            tail = "Content-Type: application/octet-stream\r\n"
        if not self.date:
            headers[hdrs.DATE] = date = rfc822_formatted_time()
            tail += f"Date: {date}\r\n"
        if not self.server:
            headers[hdrs.SERVER] = SERVER_SOFTWARE
            tail += SERVER_LINE
        return tail

    def head(self, status_line: str, values: tuple[str, ...], tail: str) -> bytes:
        """The head: ``status_line``, each name with its value (``values``, in the names'
        order, checked by ``plain_values``), ``tail`` (the lines aiohttp adds, each ended by
        CRLF) and the blank line."""
        pieces = self.pieces.copy()
        pieces[1::2] = values
        pieces[0] = f"{status_line}\r\n{pieces[0]}"
        pieces.append(tail)
        pieces.append("\r\n")
        return "".join(pieces).encode("ascii")


# the names (a dict's keys, as a tuple) -> their shape; None: names this path does not write
_shapes: dict[tuple[str, ...], Shape | None] = {}
_UNSEEN = Shape([], set())


def shape_of(names: tuple[Any, ...]) -> Shape | None:
    """The shape of a head with these names, in this order; None when one is not a ``str`` of
    printable ASCII, or is ``Content-Length`` or ``Transfer-Encoding`` (any case)."""
    shape = _shapes.get(names, _UNSEEN)
    if shape is not _UNSEEN:
        return shape
    pieces: list[Any] = [""]
    folded: set[str] = set()
    for name in names:
        text = str(name) if isinstance(name, str) else None  # (what aiohttp writes: an istr's text)
        if text is None or not _printable(text) or text.lower() in _REFUSED:
            shape = None
            break
        folded.add(text.lower())
        pieces[-1] += f"{text}: "
        pieces += (None, "\r\n")
    else:
        shape = Shape(pieces, folded)
    if len(_shapes) >= MAX_SHAPES:
        _shapes.clear()
    _shapes[names] = shape
    return shape


def shape_and_values(headers: dict[str, str]) -> tuple[Shape, tuple[str, ...]] | None:
    """The shape of ``headers``' names and their values, when a head can be written from them
    (``shape_of`` knows the names, ``plain_values`` passes the values); None otherwise."""
    shape = shape_of(tuple(headers))
    if shape is None:
        return None
    values = tuple(headers.values())
    return (shape, values) if plain_values(values) else None


def plain_values(values: Iterable[Any]) -> bool:
    """Whether every one of ``values`` is a ``str`` of ASCII without a control character
    other than TAB (what aiohttp writes as it is)."""
    try:
        text = "".join(values)
    except TypeError:
        return False
    return _printable(text)


def _printable(text: str) -> bool:
    return text.isascii() and 0 not in text.encode("ascii").translate(_CONTROL_TO_NUL)  # (an int: see sse.CR)
