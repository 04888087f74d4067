"""tollway's core: the public face for plugin authors.

    from proxy import hookimpl, Call, ProxyError

Everything a plugin needs is importable from ``proxy`` itself (the names in
``__all__``), plus the helper modules in ``PUBLIC_MODULES``, which are public
on purpose and keep their ``__all__`` names stable. Every other ``proxy.*``
module is internal: it may change without notice, and the built-in plugins do
not import it either (a test checks). ``docs/plugin-hooks.md`` lists it all,
made from this module and ``proxy/hookspecs.py``.
"""

import pluggy

from .adminauth import check_admin
from .call import Billing, CachedResponse, Call, Principal, ResponseState, Route, Timing, Units, Usage
from .dialects import Dialect
from .errors import ProxyError, bad_request
from .events import Event
from .gateway import Gateway
from .pipeline import run_detached
from .plugins import only_if, settles_before_end
from .provider import Provider, StreamDecoder
from .routes import json_response, read_json
from .schema import ConfigError
from .shared import ServiceKey, StateKey
from .snapshot import Snapshot
from .upstream import UpstreamRequest

hookimpl = pluggy.HookimplMarker("tollway")

__all__ = [
    # hooks and the per-request context
    "hookimpl", "settles_before_end", "only_if", "Call", "Principal", "Route", "Billing", "ResponseState", "Timing",
    "Usage", "Units", "CachedResponse",
    # failing: a request, or start-up
    "ProxyError", "bad_request", "ConfigError",
    # sharing between plugins
    "Gateway", "Snapshot", "StateKey", "ServiceKey", "Event",
    # upstreams and client dialects
    "Provider", "StreamDecoder", "UpstreamRequest", "Dialect",
    # plugin routes; model calls without an HTTP client (batches)
    "json_response", "read_json", "run_detached", "check_admin",
]

#: Helper modules plugins may import too, public on purpose (their ``__all__``).
PUBLIC_MODULES = {
    "proxy.provider": "helpers for provider adapters: upstream errors, JSON answers",
    "proxy.sse": "Server-Sent Events: split, parse and write events",
    "proxy.outputtext": "the text of prompts and answers, for estimates when an upstream reports no usage",
    "proxy.validate": "request body checks (the OpenAI ones, and pieces for a dialect's own)",
    "proxy.schema": "typed config sections: build dataclasses from YAML, name the path of a mistake",
    "proxy.store": "the SQL store (gateway.store) and numbered migrations for a plugin's tables",
    "proxy.cli": "CLI commands from tollway_commands: --config, a started gateway, argument types",
    "proxy.logs": "log lines that are safe to write: keys masked, repeated errors rate-limited",
    "proxy.background": "background tasks beside the requests",
    "proxy.uploads": "multipart uploads read once and parsed in place (files as offsets)",
    "proxy.media": "images and audio: checks, the audio length of an upload",
    "proxy.processes": "other processes: whether one runs; a child that ends with its parent",
}
