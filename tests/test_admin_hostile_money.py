"""Hostile input on the admin API's money routes (/admin/accounts, budgets, refills,
key and account top-ups): negative, huge, float, string, unicode, nested and 1 MB
values. Each is a 4xx with a JSON error that names what to fix, never a 500, and
changes nothing: the accounts, balances and the ledger after the attack are what
they were before it."""

from __future__ import annotations

import aiohttp
import pytest
from business import ADMIN_HEADERS, admin, biz_config

# (null is a meaning here: no cap, no limit, unmetered; it is not in these lists)
HOSTILE_NUMBERS = [-1, -0.000001, 1e300, 10**30, 2**63, -(2**63), 1e-320, "5", "", "💰", True, [], {},
                   {"$gt": 0}, "1e3", "NaN", "Infinity", 0.1234567891234]
HOSTILE_TEXT = ["", " ", "a" * 65, "é" * 10, "💰", "../x", "a/b", "a\u0000b", "a\nb", 5, 1.5, [], {}]


async def state(s, running) -> tuple:
    """Everything the attacks must leave as it was: accounts, keys, the ledger."""
    status, accounts = await admin(s, running, "GET", "/admin/accounts")
    assert status == 200
    status, keys = await admin(s, running, "GET", "/admin/keys")
    assert status == 200
    rows = await running.gw.store.fetchall("select count(*), coalesce(sum(cost_micro_usd), 0) from tollway_ledger")
    return accounts["data"], keys["data"], rows


def refused(status: int, body, name: str) -> None:
    """A 4xx with an OpenAI-shaped error that says something (not a stack trace)."""
    assert 400 <= status < 500, (name, status, body)
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"], body
    assert len(error["message"]) < 2000, (name, len(error["message"]))


@pytest.fixture
async def running(start_gateway, mock_upstream):
    running = await start_gateway(biz_config(mock_upstream.url))
    async with aiohttp.ClientSession() as s:
        status, body = await admin(s, running, "POST", "/admin/accounts", {"id": "acme", "credits": 1.0,
                                                                             "budgets": {"daily": 0.5}})
        assert status == 201, body
    return running


def account_bodies() -> list[tuple[str, str, dict]]:
    """(method, path, body) of every hostile change to try."""
    cases = []
    for value in HOSTILE_NUMBERS:
        cases += [("POST", "/admin/accounts", {"id": "new1", "credits": value}),
                  ("POST", "/admin/accounts", {"id": "new2", "budgets": {"daily": value}}),
                  ("POST", "/admin/accounts", {"id": "new3", "credits": 1,
                                               "refill": {"every": "day", "amount": value}}),
                  ("PATCH", "/admin/accounts/acme", {"budgets": {"weekly": value}}),
                  ("PATCH", "/admin/accounts/acme", {"refill": {"every": "month", "amount": value}}),
                  ("PATCH", "/admin/accounts/acme", {"limits": {"rpm": value}}),
                  ("POST", "/admin/keys", {"name": "k", "limits": {"tpm": value}}),
                  ("POST", "/admin/keys", {"name": "k", "budgets": {"monthly": value}}),
                  ("POST", "/admin/keys", {"name": "k", "credits": value}),
                  ("POST", "/admin/accounts/acme/credits", {"amount": value}),
                  ("POST", "/admin/keys/cfg_demo/credits", {"amount": value})]
    for value in HOSTILE_TEXT:
        cases += [("POST", "/admin/accounts", {"id": value, "credits": 1}),
                  ("PATCH", "/admin/accounts/acme", {"refill": {"every": value, "amount": 1}}),
                  ("PATCH", "/admin/accounts/acme", {"suspended": value}),
                  ("POST", "/admin/accounts", {"id": "new4", "credits": 1, "refill": {"every": "day", "amount": 1,
                                                                                         "rollover": value}})]
    cases += [("PATCH", "/admin/accounts/acme", {"budgets": "daily"}),
              ("PATCH", "/admin/accounts/acme", {"budgets": {"hourly": 1}}),
              ("PATCH", "/admin/accounts/acme", {"budgets": {"daily": 1, "daily ": 2}}),
              ("PATCH", "/admin/accounts/acme", {"credits": 100}),
              ("PATCH", "/admin/accounts/acme", {"balance_micro_usd": 10**12}),
              ("PATCH", "/admin/accounts/acme", {"refill": {"amount": 1}}),
              ("PATCH", "/admin/accounts/acme", {"refill": {"every": "day"}}),
              ("PATCH", "/admin/accounts/acme", []),
              ("PATCH", "/admin/accounts/acme", "x"),
              ("POST", "/admin/accounts", {"id": "acme", "credits": 1000}),  # exists: 409, not a top-up
              ("POST", "/admin/accounts", {"credits": 1}),
              ("POST", "/admin/accounts/acme/credits", {}),
              ("POST", "/admin/accounts/acme/credits", {"amount": 1, "extra": 1}),
              ("POST", "/admin/accounts/nobody/credits", {"amount": 1}),
              ("POST", "/admin/accounts/acme/credits", {"amount": 1_000_000_001})]
    return [c for c in cases if c[2] != {}]


async def test_hostile_money_changes_are_refused_and_change_nothing(running):
    async with aiohttp.ClientSession() as s:
        before = await state(s, running)
        wrong = []
        for method, path, body in account_bodies():
            status, answer = await admin(s, running, method, path, body)
            try:
                refused(status, answer, f"{method} {path} {body!r}")
            except AssertionError as exc:
                wrong.append(str(exc)[:300])
        assert not wrong, "\n".join(wrong)
        assert await state(s, running) == before


@pytest.mark.parametrize("path", ["/admin/accounts", "/admin/accounts/acme", "/admin/accounts/acme/credits",
                                  "/admin/keys/cfg_demo/credits"])
async def test_bodies_of_a_megabyte_and_more_are_refused(running, path):
    method = "PATCH" if path == "/admin/accounts/acme" else "POST"
    huge = b'{"id": "big", "credits": 1, "budgets": {"daily": 1}, "pad": "' + b"x" * (1024 * 1024) + b'"}'
    deep = b'{"refill": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2001
    many = b"{" + b",".join(b'"k%d": 1' % i for i in range(100_000)) + b"}"
    headers = {**ADMIN_HEADERS, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        before = await state(s, running)
        for body in (huge, deep, many):
            async with s.request(method, running.root + path, data=body, headers=headers) as r:
                answer = await r.json()
                refused(r.status, answer, f"{path} {body[:30]!r}")
        async with s.request(method, running.root + path, data=b"{" * 3_000_000, headers=ADMIN_HEADERS) as r:
            refused(r.status, await r.json(), "3 MB of {")
        assert await state(s, running) == before


async def test_a_float_top_up_is_exact_to_the_micro_unit_and_no_more(running):
    """0.1 + 0.2 in floats is 0.30000000000000004: the balance moves by exactly 300000."""
    async with aiohttp.ClientSession() as s:
        _, acme = await admin(s, running, "GET", "/admin/accounts/acme")
        for amount in (0.1, 0.2):
            status, body = await admin(s, running, "POST", "/admin/accounts/acme/credits", {"amount": amount})
            assert status == 200, body
        _, after = await admin(s, running, "GET", "/admin/accounts/acme")
        assert after["balance_micro_usd"] - acme["balance_micro_usd"] == 300_000
        # Below a micro-unit cannot be added (it would be money from nothing or a silent zero).
        status, body = await admin(s, running, "POST", "/admin/accounts/acme/credits", {"amount": 0.0000001})
        refused(status, body, "a tenth of a micro-unit")
        status, body = await admin(s, running, "POST", "/admin/keys/cfg_demo/credits", {"amount": 1e-7})
        refused(status, body, "a tenth of a micro-unit")
        _, last = await admin(s, running, "GET", "/admin/accounts/acme")
        assert last["balance_micro_usd"] == after["balance_micro_usd"]
