"""HTML out: the Jinja2 environment, the number formats, and the security headers."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from aiohttp import web
from markupsafe import Markup

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# No inline script or style anywhere: the pages load /static files only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def usd(micro: int | None, digits: int | None = None, currency: str = "USD") -> str:
    """Micro-USD as dollars: cents for amounts of a dollar and more, else up to
    six decimals (so small spends do not read as $0.00)."""
    if micro is None:
        return "-"
    sign = "-" if micro < 0 else ""
    micro = abs(int(micro))
    if digits is None:
        digits = 2 if micro >= 1_000_000 else 6
    whole, frac = divmod(micro, 1_000_000)
    text = f"{whole:,}.{frac:06d}"[: len(f"{whole:,}") + 1 + digits]
    if digits > 2:
        text = text.rstrip("0")
        if text.endswith("."):
            text += "00"
        elif len(text.split(".")[1]) == 1:
            text += "0"
    return f"{sign}${text}" if currency == "USD" else f"{sign}{text} {currency}"


def num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value >= 10_000:
        return f"{value / 1000:,.1f} s"
    if value >= 100:
        return f"{value:,.0f} ms"
    return f"{value:.1f} ms"


def pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.1f}%" if value < 0.999 or value == 1 else f"{value * 100:.2f}%"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_json(value: Any) -> Markup:
    """Data for a ``<script type="application/json">`` block (never executed)."""
    text = orjson.dumps(value).decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def qs(query: dict[str, str], **changes: Any) -> str:
    """The current query string with some parameters changed (None removes one)."""
    merged = {**query, **changes}
    return urlencode({k: v for k, v in merged.items() if v is not None and v != ""})


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(usd=usd, num=num, ms=ms, pct=pct, when=when, iso=iso, json=as_json)
    env.globals["qs"] = qs
    return env


class Renderer:
    def __init__(self, root: str, static_version: str, currency: str = "USD") -> None:
        self.env = make_env()
        self.root = root
        self.static_version = static_version
        self.currency = currency  # billing.currency: every amount is micro-units of it
        if currency != "USD":
            self.env.filters["usd"] = lambda micro, digits=None: usd(micro, digits, currency)

    def page(self, name: str, context: dict[str, Any], status: int = 200,
             headers: dict[str, str] | None = None, fragment: bool = False) -> web.Response:
        """Render a template; with ``fragment`` only its ``main`` block (what polling swaps in)."""
        template = self.env.get_template(name)
        ctx = {"root": self.root, "v": self.static_version, "currency": self.currency, **context}
        body = "".join(template.blocks["main"](template.new_context(ctx))) if fragment else template.render(ctx)
        return web.Response(status=status, text=body, content_type="text/html", charset="utf-8",
                            headers={**SECURITY_HEADERS, **(headers or {})})
