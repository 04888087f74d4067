"""The length of FLAC and Ogg (Opus, Vorbis) audio, counted from the
frames or packets a decoder decodes, not from the header's total.

A header's total is the client's word (FLAC's STREAMINFO sample count, the last Ogg
page's granule position, MP4's ``mdhd`` duration): a 60-minute file may say 1 s. What
a decoder plays is its frames, each of a length it cannot be told otherwise:

- FLAC: every frame header (sync code, a valid CRC-8) and its block size;
- Ogg Opus: every audio packet, from its TOC byte (frame size times frame count);
- Ogg Vorbis: every audio packet, from its mode's block size (the modes are read from
  the end of the setup header, as ffmpeg's parser does);
- MP4/M4A with AAC: in ``audiomp4.py``.

Each returns None for a stream it does not count (another codec, no frame found): the
caller treats that length as unknown.
"""

from __future__ import annotations

import re

__all__ = ["flac_seconds", "ogg_seconds"]

# -- FLAC ---------------------------------------------------------------------------------

_UTF8_LEADS = ((0x80, 0), (0xE0, 0xC0), (0xF0, 0xE0), (0xF8, 0xF0), (0xFC, 0xF8), (0xFE, 0xFC), (0xFF, 0xFE))
_FLAC_SYNC = re.compile(rb"\xff[\xf8\xf9]")
_FLAC_RATES = (0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def flac_seconds(data: bytes) -> float | None:
    """Every frame a decoder syncs on (a header whose CRC-8 holds), its block size over its
    sample rate (STREAMINFO's when the frame names none)."""
    if data[:4] != b"fLaC" or len(data) < 42:
        return None
    stream_rate = int.from_bytes(data[18:21], "big") >> 4
    pos, last = 4, False
    while not last and pos + 4 <= len(data):  # the metadata blocks
        last = bool(data[pos] & 0x80)
        pos += 4 + int.from_bytes(data[pos + 1:pos + 4], "big")
    samples_at: dict[int, int] = {}  # sample rate -> samples
    blocking = None
    end = len(data)
    frames = misses = 0
    while True:
        found = _FLAC_SYNC.search(data, pos)
        if found is None or found.start() + 6 > end:
            break
        pos = found.start()
        frame = _flac_frame(data, pos, stream_rate)
        if frame is None or (blocking is not None and frame[2] != blocking):
            misses += 1
            if misses > 1024 + 8 * frames:
                return None  # not FLAC a decoder would read either (and a walk over junk stays cheap)
            pos += 1
            continue
        size, rate, blocking, length = frame
        samples_at[rate] = samples_at.get(rate, 0) + size
        frames += 1
        pos += length
    if not samples_at:
        return None
    return sum(samples / rate for rate, samples in samples_at.items())


def _flac_frame(data: bytes, pos: int, stream_rate: int) -> tuple[int, int, int, int] | None:
    """(block size, sample rate, blocking strategy, header bytes) of a valid frame header at ``pos``."""
    b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
    if b1 & 0xFE != 0xF8 or b3 & 1 or b3 >> 4 > 10 or (b3 >> 1) & 7 == 3:
        return None
    size_code, rate_code = b2 >> 4, b2 & 0xF
    if size_code == 0 or rate_code == 15:
        return None
    i = pos + 4
    first = data[i]  # the frame or sample number, UTF-8 coded: its first byte says how many follow
    extra = next((n for n, (mask, lead) in enumerate(_UTF8_LEADS) if first & mask == lead), -1)
    if extra < 0 or i + 1 + extra + 4 > len(data) or any(data[i + k] & 0xC0 != 0x80 for k in range(1, extra + 1)):
        return None
    i += 1 + extra
    if size_code == 1:
        size = 192
    elif size_code <= 5:
        size = 576 << (size_code - 2)
    elif size_code == 6:
        size, i = data[i] + 1, i + 1
    elif size_code == 7:
        size, i = int.from_bytes(data[i:i + 2], "big") + 1, i + 2
    else:
        size = 256 << (size_code - 8)
    if rate_code == 0:
        rate = stream_rate
    elif rate_code <= 11:
        rate = _FLAC_RATES[rate_code]
    elif rate_code == 12:
        rate, i = data[i] * 1000, i + 1
    else:
        rate, i = int.from_bytes(data[i:i + 2], "big") * (1 if rate_code == 13 else 10), i + 2
    if rate <= 0 or i >= len(data) or _crc8(data[pos:i]) != data[i]:
        return None
    return size, rate, b1 & 1, i + 1 - pos


# -- Ogg ----------------------------------------------------------------------------------

_OPUS_FRAME_MS = (10, 20, 40, 60) * 3 + (10, 20) * 2 + (2.5, 5, 10, 20) * 4  # by TOC config


def _ogg_packets(data: bytes) -> dict[int, list[bytes]] | None:
    """Each logical stream's packets (by serial number), from every page found: the first
    three whole (a codec's headers), the others' first bytes (all their length needs).
    None for a file of more lacing values than a real stream has (a walk kept cheap)."""
    streams: dict[int, list[bytes]] = {}
    partial: dict[int, bytes] = {}
    budget = len(data) // 12 + 1024  # real streams (6 kbit/s Opus: 15 bytes a packet) have fewer
    pos = data.find(b"OggS")
    while pos >= 0 and pos + 27 <= len(data):
        if data[pos + 4] != 0:
            pos = data.find(b"OggS", pos + 1)
            continue
        serial = int.from_bytes(data[pos + 14:pos + 18], "little")
        nsegs = data[pos + 26]
        budget -= nsegs
        if budget < 0:
            return None
        body = pos + 27 + nsegs
        packets = streams.setdefault(serial, [])
        packet = partial.pop(serial, b"") if data[pos + 5] & 1 else b""
        for value in data[pos + 27:body]:
            if not packet and value < 255 and len(packets) >= 3:  # the usual audio packet: one segment
                packets.append(data[body:body + min(value, 2)])
                body += value
                continue
            if len(packets) < 3:
                packet += data[body:body + value]
            elif len(packet) < 2:
                packet += data[body:body + min(value, 2)]
            body += value
            if value < 255:
                packets.append(packet)
                packet = b""
        if packet:
            partial[serial] = packet
        pos = data.find(b"OggS", max(body, pos + 1))
    return streams


def ogg_seconds(data: bytes) -> float | None:
    """The longest Opus or Vorbis stream in the file, packet by packet."""
    streams = _ogg_packets(data)
    if streams is None:
        return None
    found = [seconds for packets in streams.values()
             if (seconds := _opus(packets) if packets[0].startswith(b"OpusHead") else _vorbis(packets)) is not None]
    return max(found) if found else None


def _opus(packets: list[bytes]) -> float:
    ms = 0.0
    for packet in packets[2:]:  # after OpusHead and OpusTags
        if not packet:
            continue
        toc = packet[0]
        code = toc & 3
        frames = 1 if code == 0 else 2 if code < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
        ms += min(120.0, _OPUS_FRAME_MS[toc >> 3] * frames)  # a decoder takes at most 120 ms a packet
    return ms / 1000


def _vorbis(packets: list[bytes]) -> float | None:
    if len(packets) < 3 or not packets[0].startswith(b"\x01vorbis") or len(packets[0]) < 29:
        return None
    rate = int.from_bytes(packets[0][12:16], "little")
    sizes = (1 << (packets[0][28] & 0xF), 1 << (packets[0][28] >> 4))
    long_modes = _vorbis_modes(packets[2]) if packets[2].startswith(b"\x05vorbis") else None
    if rate <= 0 or not long_modes:
        return None
    bits = (len(long_modes) - 1).bit_length()
    samples, previous = 0, None
    for packet in packets[3:]:
        if not packet or packet[0] & 1:
            continue  # empty, or not an audio packet
        mode = (packet[0] >> 1) & ((1 << bits) - 1)
        if mode >= len(long_modes):
            continue
        size = sizes[long_modes[mode]]
        if previous is not None:
            samples += (previous + size) // 4
        previous = size
    return samples / rate


def _vorbis_modes(setup: bytes) -> list[int] | None:
    """Each mode's block flag (0 short, 1 long), read backwards from the setup header's end:
    after the framing bit, the modes are 41 bits each (flag, 16 zero bits, 16 zero bits,
    an 8-bit mapping), preceded by their count less one in 6 bits."""
    total = len(setup) * 8

    def bit(n: int) -> int:  # the n-th bit from the end
        i = total - 1 - n
        return (setup[i >> 3] >> (i & 7)) & 1

    def bits_back(start: int, count: int) -> int:  # ``count`` bits ending ``start`` bits from the end, MSB first
        value = 0
        for k in range(count):
            value = value << 1 | bit(start + k)
        return value

    at = 0
    while at < total - 97 and not bit(at):
        at += 1
    at += 1  # past the framing bit
    count = best = 0
    cursor = at
    while cursor + 97 <= total and count < 64:
        if bits_back(cursor, 8) > 63 or bits_back(cursor + 8, 16) or bits_back(cursor + 24, 16):
            break
        cursor += 41
        count += 1
        if bits_back(cursor, 6) + 1 == count:
            best = count
    if not best:
        return None
    return [bit(at + 41 * (best - 1 - m) + 40) for m in range(best)]
