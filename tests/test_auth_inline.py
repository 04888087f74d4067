"""``authenticate`` reads the usual ``Authorization: Bearer KEY`` itself (``key_from_request``'s
usual answer inline: two Python calls fewer a request) and finds the key with ``Accounts.key_for``:
held here to those functions, on every way a key comes (or does not) and
keys of every kind: the same record found, or the same 401."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from plugins.accounts.http import authenticate
from plugins.accounts.keys import hash_key, key_from_request
from proxy import ProxyError

KEYS = ["sk-tw-abc", "k", "sk tw", "ключ", "a\udcffb", "sk-" + "x" * 200, " padded "]


class _Accounts:
    """What ``authenticate`` reads of the accounts book: its records by hash (and key_for, the reference)."""

    def __init__(self, keys: list[str]) -> None:
        self.by_hash = {hash_key(k): SimpleNamespace(key=k, revoked_at=None, disabled=False, expires_at=None)
                        for k in keys}

    def key_for(self, key: str):  # noqa: ANN201
        return self.by_hash.get(hash_key(key))


def _reference(accounts: _Accounts, request) -> object:  # noqa: ANN001
    """What authenticate answered before: the record, or the 401's code."""
    key = key_from_request(request)
    if key is None:
        return "missing_api_key"
    record = accounts.key_for(key)
    return record if record is not None else "invalid_api_key"


def _answer(accounts: _Accounts, request) -> object:  # noqa: ANN001
    try:
        return authenticate(accounts, request)  # type: ignore[arg-type]
    except ProxyError as exc:
        assert exc.status == 401
        return exc.code


def _requests():  # noqa: ANN202
    values = [*KEYS, "", " ", "unknown-key"]
    forms = ["Bearer {}", "bearer {}", "Bearer  {}", "BEARER {} ", "Basic {}", "{}", "Bearer{}", "Bearer\t{}"]
    for value, form in itertools.product(values, forms):
        yield {"Authorization": form.format(value)}, None
        yield {"Authorization": form.format(value), "X-API-Key": "sk-tw-abc"}, None
    for value in values:
        yield {"X-API-Key": value}, ""
        yield {}, value
        yield {"Authorization": "Bearer " + value}, "sk-tw-abc"
    yield {}, None


@pytest.mark.parametrize("known", [KEYS, []])
def test_authenticate_finds_what_the_functions_it_inlines_find(known: list[str]) -> None:
    accounts = _Accounts(known)
    seen = set()
    for headers, query in _requests():
        # (what the two read of an aiohttp request: its headers and query; a header's non-UTF-8 bytes
        # are kept as surrogates, which make_mocked_request cannot encode)
        request = SimpleNamespace(headers=CIMultiDictProxy(CIMultiDict(headers)),
                                  query=MultiDictProxy(MultiDict({} if query is None else {"api_key": query})))
        got = _answer(accounts, request)
        assert got == _reference(accounts, request), (headers, query)
        seen.add(got if isinstance(got, str) else "found")
    assert seen == {"found", "missing_api_key", "invalid_api_key"} - (set() if known else {"found"})


def test_no_request_and_no_accounts() -> None:
    with pytest.raises(ProxyError) as exc:
        authenticate(_Accounts(KEYS), None)  # type: ignore[arg-type]
    assert exc.value.code == "missing_api_key"
    request = SimpleNamespace(headers=CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-tw-abc"})),
                              query=MultiDictProxy(MultiDict()))
    with pytest.raises(ProxyError) as exc:
        authenticate(None, request)
    assert exc.value.code == "invalid_api_key"
