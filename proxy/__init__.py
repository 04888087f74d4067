"""tollway's core: the public face for plugin authors.

    from proxy import hookimpl, Call, ProxyError

See ``proxy/hookspecs.py`` for the hooks, ``proxy/provider.py`` for provider
adapters and ``proxy/dialects.py`` for client dialects.
"""

import pluggy

from .call import CachedResponse, Call, Route, Usage
from .dialects import Dialect
from .errors import ProxyError
from .provider import Provider, StreamDecoder
from .schema import ConfigError
from .upstream import UpstreamRequest

hookimpl = pluggy.HookimplMarker("tollway")

__all__ = ["hookimpl", "Call", "CachedResponse", "ConfigError", "Dialect", "Provider", "ProxyError", "Route",
           "StreamDecoder", "UpstreamRequest", "Usage"]
