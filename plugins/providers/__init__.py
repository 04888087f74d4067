"""Provider adapters (always on): which upstream kinds tollway can talk to,
and the client dialects beyond OpenAI."""

from __future__ import annotations

import importlib

from proxy import hookimpl

# kind -> "module:Class"; each adapter lives in its own module.
ADAPTERS = {
    "openai": "plugins.providers.openai:OpenAIProvider",
    "mock": "plugins.providers.mock:MockProvider",
    "anthropic": "plugins.providers.anthropic:AnthropicProvider",
    "gemini": "plugins.providers.gemini:GeminiProvider",
}
DIALECTS = {
    "anthropic": "plugins.providers.anthropic_dialect:AnthropicDialect",
}


def _load(ref: str):
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


@hookimpl
def tollway_providers():
    return {kind: cls for kind, ref in ADAPTERS.items() if (cls := _load(ref)) is not None}


@hookimpl
def tollway_dialects():
    return {name: cls() for name, ref in DIALECTS.items() if (cls := _load(ref)) is not None}
