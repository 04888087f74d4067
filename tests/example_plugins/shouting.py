"""Rewrites the request: the last user message is upper-cased before it goes upstream.

Shows a plugin with its own YAML section (``plugins.shouting``) and its state
on an instance (the module defines ``Plugin``).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy import Call, ProxyError, hookimpl


@dataclass(frozen=True)
class ShoutingOptions:
    suffix: str = "!"
    forbidden_word: str | None = None


class Plugin:
    def __init__(self) -> None:
        self.options = ShoutingOptions()

    @hookimpl
    def tollway_config_schema(self):
        return {"plugins.shouting": ShoutingOptions}

    @hookimpl
    def tollway_startup(self, gateway):
        self.options = gateway.config.section("plugins.shouting")

    @hookimpl
    async def tollway_admit(self, call: Call) -> None:
        body = call.body
        last = body["messages"][-1]
        if self.options.forbidden_word and self.options.forbidden_word in str(last.get("content")):
            raise ProxyError(403, f"the word {self.options.forbidden_word!r} is not allowed here",
                             code="forbidden_word")
        if isinstance(last.get("content"), str):
            last["content"] = last["content"].upper() + self.options.suffix
            call.set_body(body)
