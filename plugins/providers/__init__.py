"""Provider adapters (always on): which upstream kinds tollway can talk to,
and the client dialects beyond OpenAI."""

from __future__ import annotations

from proxy import hookimpl

from .anthropic import AnthropicProvider
from .anthropic_dialect import AnthropicDialect
from .gemini import GeminiProvider
from .mock import MockProvider
from .openai import OpenAIProvider
from .responses_dialect import ResponsesDialect


@hookimpl
def tollway_providers():
    return {"openai": OpenAIProvider, "mock": MockProvider, "anthropic": AnthropicProvider,
            "gemini": GeminiProvider}


@hookimpl
def tollway_dialects():
    return {"anthropic": AnthropicDialect(), "responses": ResponsesDialect()}
