"""Helpers shared by the tests of the business plugins (auth, ratelimit, quotas, pricing, ledger)."""

from __future__ import annotations

import io
import wave

import aiohttp
from conftest import base_config

ADMIN = "admin-secret-123"
DEMO = "sk-test-demo-key-0001"
ALL = ["auth", "ratelimit", "quotas", "pricing", "ledger"]


def biz_config(upstream: str | None = None, keys: list[dict] | None = None, enabled: list[str] | None = None,
               **plugin_options) -> dict:
    """``base_config`` with the business plugins on, an admin key and one funded key (``DEMO``, $5)."""
    config = base_config(upstream)
    config["server"]["admin_key"] = ADMIN
    config["plugins"] = {"enabled": list(ALL if enabled is None else enabled), **plugin_options}
    config["keys"] = keys if keys is not None else [{"name": "demo", "key": DEMO, "credits": 5.0}]
    return config


#: The upstream kinds ``kinds_config`` serves, each as a model of its own name.
KINDS = ("openai", "anthropic", "gemini")


def kinds_config(upstream, price: dict | None = None, total: float = 20) -> dict:
    """``biz_config`` with models ``openai``, ``anthropic`` and ``gemini`` on the test's
    ``upstream`` (an origin serving each kind's API), each of its kind, timeouts short
    (``total`` seconds in all)."""
    config = biz_config(upstream.url)
    timeouts = {"connect": 2, "first_byte": 5, "idle": 5, "total": total}
    config["providers"]["up"]["timeouts"] = timeouts
    config["providers"]["anthropic"] = {"kind": "anthropic", "base_url": upstream.root, "api_key": "sk-ant",
                                        "timeouts": timeouts}
    config["providers"]["gemini"] = {"kind": "gemini", "base_url": upstream.root, "api_key": "g-key",
                                     "timeouts": timeouts}
    for kind in KINDS:
        config["models"][kind] = {"provider": "up" if kind == "openai" else kind, "model": "m",
                                  "price": price or {"input": 1.0, "output": 2.0}, "context_window": 100_000}
    return config


def add_claude(config: dict, root: str, model: str | None = None, price: dict | None = None) -> dict:
    """Add the Anthropic provider ``claude`` at ``root`` (an origin, no /v1) and the model
    ``claude`` served by it (as ``model`` upstream; default price $3/$15 per 1M)."""
    config["providers"]["claude"] = {"kind": "anthropic", "base_url": root, "api_key": "sk-ant-test"}
    config["models"]["claude"] = {"provider": "claude", **({"model": model} if model else {}),
                                  "price": price or {"input": 3.0, "output": 15.0}}
    return config


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent mono 16-bit WAV file that lasts ``seconds``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


#: Short names the tests use for the ledger's columns (others are used as named).
LEDGER_COLUMNS = {"prompt": "prompt_tokens", "completion": "completion_tokens", "cost": "cost_micro_usd",
                  "key": "key_id"}


async def ledger_rows(running, *names: str) -> list[dict]:
    """The ledger's rows in time order once the writer has flushed, as dicts of ``names``
    (``cost`` is ``cost_micro_usd``, see ``LEDGER_COLUMNS``)."""
    from plugins.accounts import ACCOUNTS

    await running.gw.services[ACCOUNTS].writer.flush()
    columns = ", ".join(LEDGER_COLUMNS.get(n, n) for n in names)
    rows = await running.gw.store.fetchall(f"select {columns} from tollway_ledger order by time")
    return [dict(zip(names, r, strict=True)) for r in rows]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN_HEADERS = bearer(ADMIN)


async def admin(session: aiohttp.ClientSession, running, method: str, path: str, json=None, **kw):
    """An admin API call: (status, body)."""
    async with session.request(method, running.root + path, json=json, headers=ADMIN_HEADERS, **kw) as r:
        return r.status, await r.json()


async def chat(session: aiohttp.ClientSession, running, key: str | None, model: str = "echo",
               content: str = "hello there", headers: dict | None = None, **body):
    """A raw chat call: (status, headers, body as JSON or text)."""
    hdrs = {**(bearer(key) if key else {}), **(headers or {})}
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    async with session.post(running.url + "/chat/completions", json=payload, headers=hdrs) as r:
        data = await r.read()
        try:
            import orjson

            parsed = orjson.loads(data)
        except Exception:
            parsed = data.decode()
        return r.status, r.headers, parsed


async def credits(session: aiohttp.ClientSession, running, key: str) -> dict:
    async with session.get(running.url + "/credits", headers=bearer(key)) as r:
        assert r.status == 200, await r.text()
        return await r.json()
