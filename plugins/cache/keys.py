"""Canonical request forms: the exact key, the semantic bucket, the texts to embed.

Three views of one OpenAI chat body:

- the **exact key**: a sha256 of every field that can change the answer, as
  canonical JSON (sorted keys, no insignificant whitespace). Fields that cannot
  change the answer's content (``stream``, ``stream_options``, ``user``,
  ``metadata``, ``store``, ``service_tier`` and the cache's own controls) are
  left out, so a streamed and a non-streamed request share an entry. Message
  text is normalised conservatively: CRLF -> LF, trailing spaces of each line
  and leading/trailing blank space of the whole text dropped, runs of spaces
  *inside* a line collapsed -- indentation at the start of a line is kept,
  because in code (Python, YAML) it is meaning.
- the **bucket**: the same hash with the user/assistant *text* taken out and
  everything else kept verbatim -- parameters, tools, the system prompt, tool
  results, images, and the shape of the conversation (roles in order). A
  semantic neighbour is only searched for inside one bucket, so a different
  system prompt, temperature or tool set can never be matched by meaning.
- the **texts**: ``query`` (the last user message) and ``context`` (the
  earlier user/assistant turns, newest kept when long). They are embedded
  separately and the similarity of two requests is the lower of the two
  cosines, so "and how old is he?" only matches when the conversation before
  it is about the same thing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

#: Body fields that never change the content of the answer.
IGNORED_FIELDS = frozenset((
    "stream", "stream_options", "user", "metadata", "store", "service_tier", "cache", "no_cache",
))
TEXT_ROLES = frozenset(("user", "assistant"))

_SPACES = re.compile(r"(?<=\S)[ \t]{2,}")
_TRAILING = re.compile(r"[ \t]+\n")


def normalise_text(text: str) -> str:
    """Whitespace that does not change meaning, removed (indentation kept)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    text = _TRAILING.sub("\n", text)
    return _SPACES.sub(" ", text)


def message_text(content: Any) -> str | None:
    """The text of a message's content; None when it has non-text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "\n".join(parts)
    return None


def _canonical_value(value: Any) -> Any:
    if isinstance(value, str):
        return normalise_text(value)
    if isinstance(value, list):
        return [_canonical_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical_value(v) for k, v in value.items()}
    return value


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class RequestForms:
    exact: str  # hex digest
    bucket: str  # hex digest
    query: str  # the last user message's text ("" when it has none)
    context: str  # earlier user/assistant turns, newest kept; "" for one turn
    guard_text: str  # every user/assistant text, for the guards
    semantic_ok: bool  # False when the conversation has no text to compare


def request_forms(body: dict, model: str, max_context_chars: int = 600, max_query_chars: int = 600,
                  max_guard_chars: int = 20_000) -> RequestForms:
    """The exact key, the bucket and the texts of a chat body (already validated).

    ``semantic_ok`` is False -- exact matching only -- when the last user message is
    longer than ``max_query_chars`` (the embedder reads only its first 256 word
    pieces, so two long prompts differing at the end would look identical) or the
    conversation's text is longer than ``max_guard_chars`` (the guards' budget).
    """
    params = {k: _canonical_value(v) for k, v in body.items() if k not in IGNORED_FIELDS and k != "messages"}
    params["model"] = model
    messages = body.get("messages") or []
    canonical_messages = []
    shape = []
    texts: list[tuple[str, str]] = []  # (role, text) of user/assistant turns, in order
    semantic_ok = True
    for m in messages:
        m = _canonical_value(m) if isinstance(m, dict) else m
        canonical_messages.append(m)
        if not isinstance(m, dict):
            shape.append(m)
            semantic_ok = False
            continue
        role = m.get("role")
        text = message_text(m.get("content"))
        if role in TEXT_ROLES and text is not None:
            # The text leaves the bucket; everything else about the message stays.
            shape.append({k: v for k, v in m.items() if k != "content"})
            texts.append((role, text))
        else:
            shape.append(m)
    exact = _digest({"p": params, "m": canonical_messages})
    bucket = _digest({"p": params, "s": shape})
    last_user = None
    for i in range(len(texts) - 1, -1, -1):
        if texts[i][0] == "user":
            last_user = i
            break
    if last_user is None or last_user != len(texts) - 1 or not texts[last_user][1]:
        # No trailing user text to match on (e.g. the last turn is a tool result).
        return RequestForms(exact, bucket, "", "", "", False)
    query = texts[last_user][1]
    earlier = [f"{role}: {text}" for role, text in texts[:last_user] if text]
    context = "\n".join(earlier)
    if len(context) > max_context_chars:
        context = context[-max_context_chars:]
    guard_text = "\n".join(text for _, text in texts)
    if len(query) > max_query_chars or len(guard_text) > max_guard_chars:
        semantic_ok = False
    return RequestForms(exact, bucket, query, context, guard_text, semantic_ok)
