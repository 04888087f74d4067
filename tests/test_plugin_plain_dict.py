"""A plugin instance keeps a plain ``__dict__`` once registered (``proxy/plugins.py``'s
``_plain_dict``): pluggy reads the instance's ``__dict__`` to find its hooks, which on CPython 3.11
leaves the attributes in a split dict whose every ``self.x`` read misses its specialization. The
copy changes nothing a plugin can see: its attributes, their later changes and new ones, through
the real server; a plugin with ``__slots__`` registers as before."""

from __future__ import annotations

import ctypes
import inspect
import sys

import aiohttp
from business import DEMO, bearer, biz_config

from proxy import hookimpl


def _split(obj: object) -> bool:
    """CPython 3.11: the instance's attributes are in a split dict (its managed dict pointer set,
    no inline values, and the dict's ``ma_values`` set). Elsewhere: False (nothing to check)."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11) or not type(obj).__flags__ & (1 << 4):
        return False
    values = ctypes.c_void_p.from_address(id(obj) - 4 * 8).value
    d = ctypes.c_void_p.from_address(id(obj) - 3 * 8).value
    return not values and bool(d) and bool(ctypes.c_void_p.from_address(d + 40).value)


class Counting:
    def __init__(self) -> None:
        self.seen = 0
        self.label = "counting"

    @hookimpl
    def tollway_finish(self, call) -> None:
        self.seen += 1
        self.last_model = call.model  # (an attribute made after registration)


class Slotted:
    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = 0

    @hookimpl
    def tollway_finish(self, call) -> None:
        self.seen += 1


async def test_registered_plugins_keep_their_attributes_in_a_plain_dict(start_gateway, mock_upstream):
    counting, slotted = Counting(), Slotted()
    running = await start_gateway(biz_config(mock_upstream.url), plugins=[counting, slotted])
    pm = running.gw.pm
    instances = [p for p in pm.get_plugins() if not inspect.ismodule(p) and not inspect.isclass(p)
                 and hasattr(p, "__dict__")]
    assert counting in instances and len(instances) > 3  # the built-ins' Plugin instances too
    assert not any(_split(p) for p in instances), [type(p) for p in instances if _split(p)]
    assert vars(counting) == {"seen": 0, "label": "counting"}
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                              json={"model": "up", "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200
    assert (counting.seen, counting.label, counting.last_model, slotted.seen) == (2, "counting", "up", 2)
