"""Client dialects: the protocols clients speak to the gateway.

The core speaks OpenAI (``OpenAIDialect``). Plugins add others through
``tollway_dialects()`` (the Anthropic Messages dialect lives with the
Anthropic provider plugin). A dialect converts between its own wire format
and the canonical OpenAI form, and knows how to pass its own streams through.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import orjson

from .call import Usage
from .errors import ProxyError
from .outputtext import completion_text, openai_stream_text, prompt_text, sse_payloads
from .streaming import ChunkEncoder, OpenAIEncoder, OpenAIPassthrough, StreamCodec
from .validate import validate_chat, validate_completions

if TYPE_CHECKING:
    from .call import Call


class Dialect:
    """A client-facing protocol. Subclass and return ``{name: instance}`` from
    ``tollway_dialects()``."""

    name: ClassVar[str] = ""

    def validate(self, body: dict) -> None:
        """Raise ProxyError(400) naming the field when the body is malformed."""
        raise NotImplementedError

    def canonical_request(self, call: Call) -> dict:
        """The client's chat body as a canonical (OpenAI) body."""
        raise NotImplementedError

    def response_usage(self, body: dict) -> Usage | None:
        """Usage of a native (passthrough) non-stream answer in this dialect."""
        raise NotImplementedError

    def answer_usage(self, call: Call, body: dict) -> Usage | None:
        """Usage of a native non-stream answer, with the call at hand (a dialect may
        note what else it needs from the answer); by default ``response_usage``."""
        return self.response_usage(body)

    def add_usage_fields(self, body: dict, extra: dict) -> None:
        """Add the gateway's usage fields (e.g. ``cost``) to a native answer."""
        usage = body.get("usage")
        if isinstance(usage, dict):
            body["usage"] = {**usage, **extra}  # a copy: the body may be a cached entry's

    def usage_object(self, usage: Usage) -> dict:
        """``usage`` as this dialect's answers carry it: what an answer tells when the
        gateway counted its usage (the upstream's was missing or unusable)."""
        return usage.to_openai()

    def passthrough(self, call: Call) -> StreamCodec:
        """A codec for a native stream: bytes forwarded, usage sniffed."""
        raise NotImplementedError

    def encoder(self, call: Call) -> ChunkEncoder:
        """An encoder of canonical chunks into this dialect's stream."""
        raise NotImplementedError

    def render_completion(self, call: Call, completion: dict) -> dict:
        """A canonical chat.completion as this dialect's answer body."""
        raise NotImplementedError

    async def estimate_input_tokens(self, call: Call) -> int:
        """The input tokens of a request in this dialect, counted by the gateway (for an
        upstream that cannot count them): about four characters a token by default."""
        text = prompt_text(self.canonical_request(call))
        return -(-len(text) // 4)

    def client_error(self, call: Call, err: ProxyError) -> ProxyError:
        """``err`` (answered to a call in this dialect) in the client's own terms: a dialect whose
        requests are translated renames the request fields the translation made (``messages[0]``,
        ``max_tokens``) to the ones the client sent. By default ``err`` as it is."""
        return err

    def answer_text(self, body: dict) -> str:
        """The generated text of a native non-stream answer, for a token estimate when
        the upstream's usage is missing. The default counts the whole answer as text:
        too much, never nothing; dialects override it."""
        return orjson.dumps(body).decode()

    def streamed_text(self, blob: bytes) -> str:
        """The generated text in bytes of this dialect's stream, for a token
        estimate when the upstream's usage is missing (parsed only then). The
        default counts the raw bytes as text: too much, never nothing; dialects
        override it."""
        return blob.decode("utf-8", "replace")


class OpenAIDialect(Dialect):
    name = "openai"

    def validate(self, body: dict) -> None:
        validate_chat(body)

    def canonical_request(self, call: Call) -> dict:
        return call.body

    def response_usage(self, body: dict) -> Usage | None:
        return Usage.from_openai(body.get("usage"))

    def passthrough(self, call: Call) -> StreamCodec:
        return OpenAIPassthrough()

    def encoder(self, call: Call) -> ChunkEncoder:
        return OpenAIEncoder()

    def render_completion(self, call: Call, completion: dict) -> dict:
        return completion

    def answer_text(self, body: dict) -> str:
        return completion_text(body)

    def streamed_text(self, blob: bytes) -> str:
        return openai_stream_text(blob)


class CompletionsDialect(OpenAIDialect):
    """Legacy completions (``POST /v1/completions``: ``prompt``, ``suffix`` for fill-in-the-middle):
    passed through to OpenAI-compatible upstreams only, stream and not, usage like chat."""

    name = "completions"

    def validate(self, body: dict) -> None:
        validate_completions(body)

    def canonical_request(self, call: Call) -> dict:
        provider = call.route.provider if call.route is not None else None
        raise ProxyError(400, f"model {call.model!r} is served by provider "
                              f"'{provider.name if provider else '?'}' ({provider.kind if provider else '?'}); "
                              "legacy completions (/v1/completions) go only to OpenAI-compatible providers: "
                              "use /v1/chat/completions", param="model", code="completions_not_supported")

    def answer_text(self, body: dict) -> str:
        return choices_text([body])

    def streamed_text(self, blob: bytes) -> str:
        return choices_text(sse_payloads(blob))


def choices_text(chunks: Iterable[dict]) -> str:
    """The ``text`` of every choice of legacy completions (whole answers or stream chunks)."""
    out = []
    for chunk in chunks:
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            text = choice.get("text") if isinstance(choice, dict) else None
            if isinstance(text, str):
                out.append(text)
    return "".join(out)
