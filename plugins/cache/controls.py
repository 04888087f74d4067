"""Client controls: what a request may ask of the cache, read and stripped.

- body ``"cache": {"no_cache": true, "no_store": true, "ttl": N, "semantic": false}``
  (``semantic: false``: answer from the exact layer only, never by meaning);
- body ``"cache": true`` (AICredits' form): ask the upstream for prompt caching
  -- on Anthropic upstreams, ``cache_control`` on the system prompt and the
  stable prefix (``plugins/providers/anthropic_request.py``); ``"cache": false``
  asks for nothing;
- body ``"no_cache": true`` (top level);
- headers ``Cache-Control: no-cache`` (do not answer from the cache) and
  ``no-store`` (do not keep this answer).

Both body fields are removed before the request goes upstream (providers
reject unknown fields). A malformed control is a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy import ProxyError

_BODY_KEYS = ("no_cache", "no_store", "ttl", "semantic")


@dataclass(slots=True)
class Controls:
    no_cache: bool = False  # do not serve from the cache
    no_store: bool = False  # do not keep the answer
    ttl: float | None = None  # seconds the stored entry lives (None: the configured ttl)
    semantic: bool = True  # may a semantic (by meaning) hit answer?
    prompt_cache: bool = False  # "cache": true -- ask the upstream for prompt caching


def _bad(message: str, param: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_cache_control")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_controls(body: dict, headers: Mapping[str, str] | None, max_ttl: float) -> tuple[Controls, dict | None]:
    """The controls, and the body without them (None when it had none)."""
    c = Controls()
    stripped = None
    if "cache" in body or "no_cache" in body:
        stripped = {k: v for k, v in body.items() if k not in ("cache", "no_cache")}
    top = body.get("no_cache")
    if top is not None:
        if not isinstance(top, bool):
            raise _bad(f"'no_cache' must be true or false, got {top!r}", "no_cache")
        c.no_cache = top
    opts = body.get("cache")
    if isinstance(opts, bool):
        c.prompt_cache = opts
    elif opts is not None:
        if not isinstance(opts, dict):
            raise _bad("'cache' must be true, false, or an object like {\"no_cache\": true, \"no_store\": true, "
                       "\"ttl\": 60, \"semantic\": false}", "cache")
        for key, value in opts.items():
            if key not in _BODY_KEYS:
                raise _bad(f"'cache.{key}' is not a cache control (known: {', '.join(_BODY_KEYS)})",
                           f"cache.{key}")
            if key == "ttl":
                if not _number(value) or value < 0 or value > max_ttl:
                    raise _bad(f"'cache.ttl' must be a number of seconds between 0 and {max_ttl:g}, got {value!r}",
                               "cache.ttl")
                c.ttl = float(value)
            elif not isinstance(value, bool):
                raise _bad(f"'cache.{key}' must be true or false, got {value!r}", f"cache.{key}")
            elif key == "no_cache":
                c.no_cache = c.no_cache or value
            elif key == "semantic":
                c.semantic = value
            else:
                c.no_store = value
    if headers is not None:
        header = headers.get("Cache-Control")
        if header:
            directives = {d.strip().split("=", 1)[0].lower() for d in header.split(",")}
            c.no_cache = c.no_cache or "no-cache" in directives
            c.no_store = c.no_store or "no-store" in directives
    if c.ttl == 0:
        c.no_store = True
    return c, stripped
