"""The length of MP4/M4A audio with AAC, counted from its samples, not its header.

``mdhd``'s duration and ``stts``'s deltas are the client's word; what a decoder plays is
every AAC frame of the sound track: its sample count (``stsz``, and ``trun`` in a
fragmented file) times the frame length (1024, or 960), over the sample rate of the AAC
config (``esds``; with SBR the core's frames at the core's rate: the same length).
None for another codec or no sample found (see ``audiopackets.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["mp4_seconds"]

_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"moof", b"traf"}


def _boxes(data: bytes, start: int, end: int, depth: int = 0) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of each box in data[start:end], into containers (a few
    levels deep: moov, trak, mdia, minf, stbl, stsd, mp4a, esds)."""
    if depth > 8:
        return
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1 and pos + 16 <= end:
            size, head = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            size = end - pos  # a box that runs past its parent: read what is there
        yield kind, pos + head, pos + size
        if kind in _CONTAINERS:
            yield from _boxes(data, pos + head, pos + size, depth + 1)
        elif kind == b"stsd":  # version, flags and an entry count, then the sample entries
            yield from _boxes(data, pos + head + 8, pos + size, depth + 1)
        elif kind == b"mp4a":  # 28 bytes of fields (QuickTime's version 1 and 2: 16 and 36 more), then boxes
            version = int.from_bytes(data[pos + head + 8:pos + head + 10], "big")
            fields = 28 + ((16, 36)[version - 1] if version in (1, 2) else 0)
            yield from _boxes(data, pos + head + fields, pos + size, depth + 1)
        pos += size


def mp4_seconds(data: bytes) -> float | None:
    """An MP4 whose one sound track is AAC: its sample count times 1024 (or 960) samples,
    over the AAC config's sample rate."""
    if data[4:8] != b"ftyp":
        return None
    sound = aac = None
    count = tracks = 0
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind == b"trak":
            tracks += 1
        elif kind == b"hdlr" and data[start + 8:start + 12] == b"soun":
            sound = tracks
        elif kind == b"esds" and sound == tracks and aac is None:
            aac = _aac_config(data[start:end])
        elif kind == b"stsz" and sound == tracks:
            count += int.from_bytes(data[start + 8:start + 12], "big")
        elif kind == b"trun" and tracks == 1:
            count += int.from_bytes(data[start + 4:start + 8], "big")
    if aac is None or not count:
        return None
    rate, frame = aac
    return count * frame / rate


def _descriptor(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, body start, body end) of the MPEG-4 descriptor at ``i``."""
    tag, i, size = data[i], i + 1, 0
    for _ in range(4):
        byte, i = data[i], i + 1
        size = size << 7 | byte & 0x7F
        if not byte & 0x80:
            break
    return tag, i, i + size


def _aac_config(esds: bytes) -> tuple[int, int] | None:
    """(sample rate, samples a frame) of the AAC AudioSpecificConfig in an ``esds`` box:
    ES descriptor, its decoder config (MPEG-4 or MPEG-2 AAC), its decoder specific info."""
    try:
        tag, start, _ = _descriptor(esds, 4)
        if tag != 3:
            return None
        flags, i = esds[start + 2], start + 3
        i += (2 if flags & 0x80 else 0) + (1 + esds[i] if flags & 0x40 else 0)
        i += 2 if flags & 0x20 else 0
        tag, start, _ = _descriptor(esds, i)
        if tag != 4 or esds[start] not in (0x40, 0x66, 0x67, 0x68):
            return None
        tag, start, end = _descriptor(esds, start + 13)
    except IndexError:
        return None
    if tag != 5 or end - start < 2:
        return None
    config = int.from_bytes(esds[start:end], "big")
    left = (end - start) * 8

    def take(n: int) -> int:
        nonlocal left
        left -= n
        return (config >> left) & ((1 << n) - 1) if left >= 0 else -1

    aot, index = take(5), take(4)
    rate = take(24) if index == 15 else _AAC_RATES[index] if 0 <= index < len(_AAC_RATES) else 0
    take(4)  # channel configuration
    if aot in (5, 29):  # SBR / PS: the core's frames, at the core's rate (the rate above)
        if take(4) == 15:
            take(24)
        aot = take(5)
    if aot not in (1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23) or rate <= 0:
        return None
    return rate, 960 if take(1) == 1 else 1024
