"""Prices by the unit: images (per image, by size and quality), speech (per input
character), transcriptions and translations (per minute of audio).

A model whose ``price`` names the unit is billed by it; otherwise by the tokens
the upstream reports (``price.input``/``output``), as chat is. Costs are computed
in integers (femto-USD) and rounded up to the micro-USD, like token costs.

Image tiers: ``price.images`` maps ``"SIZE/QUALITY"`` (or just ``"SIZE"``) to USD.
A request that says its size and quality is priced at that tier; one that says
only its size, at the dearest tier of that size; one that says neither, at the
dearest tier of all (the upstream picks, the gateway cannot know which). A size
or quality with no price is refused before the upstream is called (400 naming
the priced tiers), never billed at a guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy import ProxyError

from .money import FEMTO_PER_MICRO, MICRO, PriceTable

if TYPE_CHECKING:
    from proxy import Call

UNIT_ENDPOINTS = frozenset(("images", "image_edits", "speech", "transcriptions", "translations"))
AUDIO_ENDPOINTS = frozenset(("transcriptions", "translations"))
#: Seconds of audio an unreadable upload may hold, per byte: 8 kbit/s, below any speech codec in use.
SECONDS_PER_BYTE = 1 / 1000


def image_price(table: PriceTable, tier: str) -> int | None:
    """Femto-USD per image of ``tier`` ("SIZE/QUALITY", "SIZE" or ""), None when unpriced."""
    images = table.images
    if not images:
        return None
    if not tier:
        return max(images.values())
    if tier in images:
        return images[tier]
    size, _, quality = tier.partition("/")
    if not size:  # only the quality was said: the dearest tier of that quality
        same_quality = [v for k, v in images.items() if k.partition("/")[2] == quality]
        return max(same_quality) if same_quality else None
    if quality and size in images:
        return images[size]
    if not quality:
        same_size = [v for k, v in images.items() if k.partition("/")[0] == size]
        if same_size:
            return max(same_size)
    return None


def check_units(call: Call, table: PriceTable) -> None:
    """400 before the upstream is called when an image tier has no price."""
    units = call.billing.units
    if units is None or call.endpoint not in ("images", "image_edits") or not table.images:
        return
    if image_price(table, units.image_tier) is None:
        raise ProxyError(400, f"model {call.model!r} has no price for images of {units.image_tier!r}; its priced "
                              f"sizes/qualities: {', '.join(sorted(table.images))}", param="size",
                         code="unpriced_image_size")


def _micro(femto: int, ppm: int, divisor: int = FEMTO_PER_MICRO) -> int:
    """Micro-units (rounded up) of ``femto`` price units times ``ppm``; ``divisor``:
    the table's price units per micro-unit (another currency makes it larger)."""
    return -(-femto * ppm // (divisor * MICRO))


def _audio_micro(microseconds: int, table: PriceTable, ppm: int) -> int:
    """Micro-units for that much audio at the table's per-minute price, counted in
    whole milliseconds rounded up."""
    assert table.audio_minute is not None
    millis = -(-microseconds // 1000)
    return _micro(-(-millis * table.audio_minute // 60_000), ppm, table.divisor)


def unit_cost(call: Call, table: PriceTable, ppm: int = MICRO) -> int | None:
    """Micro-USD for a unit-priced answer, None when its model is priced by tokens."""
    units = call.billing.units
    if units is None:
        return None
    if call.endpoint in ("images", "image_edits"):
        price = image_price(table, units.image_tier)
        return None if price is None else _micro(units.images * price, ppm, table.divisor)
    if call.endpoint == "speech":
        return None if table.characters is None else _micro(units.characters * table.characters, ppm, table.divisor)
    if call.endpoint in AUDIO_ENDPOINTS and table.audio_minute is not None:
        return _audio_micro(round(billed_seconds(call) * 1_000_000), table, ppm)
    return None


def unit_bound(call: Call, table: PriceTable) -> int | None:
    """The most a unit-priced request can cost (its reservation), None when priced by tokens."""
    units = call.billing.units
    if units is None:
        return None
    if call.endpoint in ("images", "image_edits", "speech"):
        return unit_cost(call, table)  # known from the request: the bound is the cost
    if call.endpoint in AUDIO_ENDPOINTS and table.audio_minute is not None:
        # Counted: its length. Not counted: its header is the client's word, and the bill may
        # reach what the upload can hold (``billed_seconds``).
        seconds = units.measured_seconds if units.audio_counted else None
        if seconds is None:
            seconds = len(call.raw_body) * SECONDS_PER_BYTE
        # The upstream's own measure may differ a little from the gateway's: hold 10% more.
        return _audio_micro(round(seconds * 1_100_000), table, MICRO)
    return None


def billed_seconds(call: Call) -> float:
    """The audio length billed, never more than the upload can hold (``most``).

    An upload the gateway counted (mp3, wav, flac, ogg opus/vorbis, mp4/m4a aac): the
    upstream's report, else the count. A report above ``most`` (a length in milliseconds
    sent as seconds, a broken server) is not believed: the count is billed instead, so it
    cannot take an account's whole balance. (Not capped at the count itself: the count
    and the upstream's decoding may differ a little.)

    An upload it could not count (speex, alac, ogg flac, webm: only a header says a
    length, and a client writes its header): the larger of the upstream's report and
    the header. The report is the upstream's own decoding, what it bills the operator
    for, so a header that claims less (1 s in front of 20 s) is not believed; a header
    that claims more than was heard is the client's own statement of what it sent. With
    no report (a json answer without ``usage.seconds``), ``most``: nothing else bounds
    it, and answering for free or on the header is what a short header would exploit.
    (text, srt and vtt report none: those are refused before the upstream is called.)"""
    units = call.billing.units
    assert units is not None
    most = len(call.raw_body) * SECONDS_PER_BYTE
    reported = None if units.audio_measured else units.audio_seconds
    measured = units.measured_seconds
    if not units.audio_counted:
        if reported is None or reported > most:
            return most
        return min(max(reported, measured or 0.0), most)
    if reported is not None and reported <= most:
        return reported
    return min(measured, most) if measured is not None else most
