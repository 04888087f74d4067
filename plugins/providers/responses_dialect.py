"""The OpenAI Responses dialect: ``POST /v1/responses``.

To an upstream that serves the Responses API itself (OpenAI, and any
``kind: openai`` provider unless ``responses_api: false``) the request goes up
as sent (model name swapped) and the answer comes back byte for byte; usage is
read from the answer's ``usage`` (non-stream) or from the stream's terminal
event (``responses_stream.ResponsesPassthrough``). To any other upstream it is
translated through the canonical (Chat Completions) form both ways
(``responses_canonical``); what needs the upstream's memory
(``previous_response_id``, ``store: true``) is refused there with a 400.
"""

from __future__ import annotations

from proxy import Call, Dialect, ProxyError, Usage
from proxy.provider import RESPONSE_ID

from .responses_canonical import completion_to_response, to_canonical
from .responses_encoder import ResponsesEncoder
from .responses_errors import in_responses_terms
from .responses_stream import ResponsesPassthrough, answer_text, stream_text, usage_from_responses, usage_to_responses
from .responses_validate import validate_responses


class ResponsesDialect(Dialect):
    name = "responses"

    def validate(self, body: dict) -> None:
        validate_responses(body)

    def canonical_request(self, call: Call) -> dict:
        return to_canonical(call)

    def response_usage(self, body: dict) -> Usage | None:
        return usage_from_responses(body.get("usage"))

    def answer_usage(self, call: Call, body: dict) -> Usage | None:
        if isinstance(body.get("id"), str):
            call.state[RESPONSE_ID] = body["id"]
        return usage_from_responses(body.get("usage"))

    def usage_object(self, usage: Usage) -> dict:
        return usage_to_responses(usage)

    def passthrough(self, call: Call) -> ResponsesPassthrough:
        return ResponsesPassthrough(call)

    def encoder(self, call: Call) -> ResponsesEncoder:
        return ResponsesEncoder(call)

    def render_completion(self, call: Call, completion: dict) -> dict:
        return completion_to_response(call, completion, call.billing.usage)

    def client_error(self, call: Call, err: ProxyError) -> ProxyError:
        return in_responses_terms(call, err)

    def answer_text(self, body: dict) -> str:
        return answer_text(body)

    def streamed_text(self, blob: bytes) -> str:
        return stream_text(blob)
