"""The text access log reads an aiohttp request's ``remote`` and ``path`` off the fields they
are made of (or what a clone set), not through the reify'd properties (a Python call each on
their first read): held here to the properties, line for line, on real aiohttp requests
(every kind of peer: IPv4, IPv6, a Unix socket's path, none, a list), clones that set the
remote or the URL, escaped paths, and requests whose properties were read before."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy import accesslog
from proxy.accesslog import AccessLog
from proxy.call import Call, Usage

PEERS = [("127.0.0.1", 40000), ("::1", 40000, 0, 0), "/run/tollway.sock", None, ["10.0.0.9", 1], ("", 0),
         ("203.0.113.7", 443)]
PATHS = ["/v1/chat/completions", "/v1/chat%2Fcompletions", "/v1/caf%C3%A9?x=1", "/", "/v1/a%20b/"]


def _requests():  # noqa: ANN202
    for peer in PEERS:
        for path in PATHS:
            for clone in (None, "remote", "url", "both"):
                for read_first in (False, True):
                    req = make_mocked_request("POST", path, headers={"Authorization": "Bearer x"})
                    req._transport_peername = peer
                    if clone == "remote":
                        req = req.clone(remote="198.51.100.4")
                    elif clone == "url":
                        req = req.clone(rel_url="/v1/other%7Epath")
                    elif clone == "both":
                        req = req.clone(remote="198.51.100.5", rel_url="/v1/x")
                    if clone is not None:
                        req._transport_peername = peer
                    if read_first:
                        _ = req.remote, req.path
                    yield req


def test_the_line_names_what_the_properties_say() -> None:
    assert accesslog._AIOHTTP_REQUEST is not None  # (the aiohttp these fields are read from: 3.14)
    log = AccessLog(stream=io.StringIO(), clock=lambda: 1_800_000_000.25)
    n = 0
    for req in _requests():
        call = Call(req, "chat", {"model": "bench", "stream": True}, b"{}")
        call.response.status = 200
        call.billing.usage = Usage(3, 4)
        call.timing.ended_at = call.timing.started + 0.0012
        fast = log._text(call)
        call.request = SimpleNamespace(remote=req.remote, method=req.method, path=req.path)
        assert fast == log._text(call), (req._transport_peername, req.path)
        n += 1
    assert n == len(PEERS) * len(PATHS) * 8


@pytest.mark.parametrize("peer", PEERS)
def test_the_remote_read_is_the_propertys(peer: object) -> None:
    req = make_mocked_request("GET", "/v1/models")
    req._transport_peername = peer
    call = Call(req, "models", {}, b"")
    call.response.status = 200
    line = AccessLog(stream=io.StringIO(), clock=lambda: 0.0)._text(call)
    assert line.split(" ")[1] == str(req.remote)
