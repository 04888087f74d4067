"""The admission's objects are made with their fields set in place (no dataclass ``__init__``,
a Python frame less each): the rate limiter's ``Admission`` and ``RateClaim``, quotas'
``Admission``, ``CreditClaim`` and ``Reservation``. Through the real server, each is held to
what its class makes from the same leading values: every field set, the same defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import aiohttp
from business import biz_config, chat

from plugins.accounts import claims as claims_module
from plugins.accounts.claims import Admission, CreditClaim, RateClaim, SlotClaim
from plugins.quotas import RESERVATION, Reservation
from proxy import hookimpl

KEY = "sk-test-in-place-0001"


def _fields(obj: object) -> dict:
    """Every field's value (a field left unset raises AttributeError here)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


class _Reservations:
    """Each request's reservation, as settle is about to read it."""

    def __init__(self) -> None:
        self.seen: list[tuple[type, dict]] = []

    @hookimpl
    def tollway_usage(self, call) -> None:  # noqa: ANN001
        hold = call.state.get(RESERVATION)
        if hold is not None:
            self.seen.append((type(hold), _fields(hold)))


async def test_the_admission_objects_are_what_their_classes_make(start_gateway, monkeypatch, tmp_path):
    admissions: list[tuple[type, list, int, object, list]] = []
    admit_local = claims_module.admit_local

    def seen(tats: dict, in_flight: dict, total_of: Callable, admission: Admission) -> bool:
        admissions.append((type(admission), list(admission.claims), len(admission.callbacks), admission.refused,
                           [(type(c), _fields(c)) for c in admission.claims]))
        return admit_local(tats, in_flight, total_of, admission)

    monkeypatch.setattr(claims_module, "admit_local", seen)  # (what run_admission calls with memory counters)
    reservations = _Reservations()
    keys = [{"name": "k", "key": KEY, "credits": 10.0, "limits": {"rpm": 1000, "tpm": 10**6, "concurrency": 4}}]
    for i, enabled in enumerate((None, ["auth", "ratelimit"], ["auth", "quotas", "pricing", "ledger"])):
        admissions.clear()
        reservations.seen.clear()
        config = biz_config(keys=keys, **({"enabled": enabled} if enabled else {}))
        config["storage"] = {"url": f"sqlite:///{tmp_path}/store{i}.db"}  # (one serving process a store)
        running = await start_gateway(config, plugins=[reservations])
        async with aiohttp.ClientSession() as s:
            for max_tokens in (20, None):
                status, _, body = await chat(s, running, KEY, **({"max_tokens": max_tokens} if max_tokens else {}))
                assert status == 200, body
        assert len(admissions) == 2
        for kind, claims, callbacks, refused, fields in admissions:
            assert kind is Admission and refused is None and callbacks == 0  # (run_admission took them out)
            for (claim_type, got), claim in zip(fields, claims, strict=True):
                assert claim_type is type(claim)
                if claim_type is RateClaim:
                    want = RateClaim(got["rules"], got["tokens"], got["now"])
                elif claim_type is CreditClaim:
                    want = CreditClaim(got["account"], got["amount"], got["shared"])
                else:
                    want = SlotClaim(got["scope"], got["limit"])
                assert got == _fields(want)
        kinds = [type(c) for c in admissions[0][1]]
        assert kinds == {None: [SlotClaim, RateClaim, CreditClaim], "r": [SlotClaim, RateClaim],
                         "q": [CreditClaim]}[None if enabled is None else "r" if "ratelimit" in enabled else "q"]
        if enabled is not None and "quotas" not in enabled:
            assert reservations.seen == []
            continue
        assert len(reservations.seen) == 2
        for kind, got in reservations.seen:
            assert kind is Reservation
            want = Reservation(got["account"], got["amount"], got["budget"], got["hold"], got["multiplier"])
            assert got == _fields(want)
