"""tollway's core: the public face for plugin authors.

    from proxy import hookimpl, Call, ProxyError

See ``proxy/hookspecs.py`` for the hooks, ``proxy/provider.py`` for provider
adapters and ``proxy/dialects.py`` for client dialects.
"""

import pluggy

from .call import Billing, CachedResponse, Call, Principal, ResponseState, Route, Timing, Usage
from .dialects import Dialect
from .errors import ProxyError
from .provider import Provider, StreamDecoder
from .schema import ConfigError
from .shared import ServiceKey, StateKey
from .upstream import UpstreamRequest

hookimpl = pluggy.HookimplMarker("tollway")

__all__ = ["hookimpl", "Billing", "Call", "CachedResponse", "ConfigError", "Dialect", "Principal", "Provider",
           "ProxyError", "ResponseState", "Route", "ServiceKey", "StateKey", "StreamDecoder", "Timing",
           "UpstreamRequest", "Usage"]
