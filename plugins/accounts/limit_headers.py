"""The rate-limit headers of every answer to a limited key, and the per-key plan they are made from.

OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` and the generic
``X-RateLimit-{Limit,Remaining,Reset}`` (of the requests limit, else the tokens limit); for
each kind the limit with the least left (ties: the one furthest from its reset) is shown.
``remaining`` is what ``gcra_check`` would still admit; ``reset`` the time until the limit is
full again (``duration``), ``X-RateLimit-Reset`` that moment (``iso_at``).

Why a plan keeps state between answers. Under load every answer sees different debts: at
``rpd: 1000000000`` a request adds 86 us of debt, and the requests of a burst are admitted
faster than it drains, so a memo of the last debts hit ~6% of answers at 64 connections,
and each miss paid ``int()``, ``str()``, a ``ceil()`` and nine dict stores (~20k
instructions). But the texts change far less often than the debts: ``remaining`` steps once
per interval of debt, the reset text once per millisecond or second, and the limit shown
(``rpm``'s, far from its limit) does not change at all. Each text is a MONOTONE function of
its rule's debt (``int((period - debt + EPS) / interval)`` clamped at 0: IEEE rounding of each
operation is monotone, and so is truncation; ``ceil(debt * 1000)``, ``ceil(debt - EPS)``), so
a value seen at two debts is the value at every debt between them. Each rule keeps that
bracket (``_Cell``): a debt inside it reuses the rule's ``remaining`` (and, for the rule shown,
its texts) with two float comparisons and no call; a debt outside computes them as before
and widens the bracket when the value is the same. The texts each group wrote last are kept
in one dict per plan (its keys in the answer's order) and rewritten only where they changed.
The headers are exactly those of the definition without state (``tests/test_ratelimit_headers_reference.py``
holds them to it, a float either side of every step).

When every group holds its rule (the usual answer: at one request at a time every debt is the
same, and under load ``rpm``'s far-off limit is shown), the plan keeps those conditions as one
flat guard (``Plan.hold``: each rule's place and the debts it may have); an answer inside it
writes the texts kept, ``X-RateLimit-Reset`` included, with one comparison pair a rule and no
per-group step (``tests/test_ratelimit_headers_guard.py`` holds it to the per-group way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from multidict import istr

from proxy import ResponseState

from .gcra import _ISO_CACHE, _MS_TEXT, EPS, Rule, Tat, duration, iso_at, reset_of

# Per kind: the OpenAI header names (limit, remaining, reset). The names are ``istr``s (a
# ``str`` that carries its case-folded form, as aiohttp's own ``hdrs`` names): the response's
# case-insensitive headers then do not fold each name again for every answer (~650
# instructions a header, nine headers on every answer to a limited key).
HEADER_NAMES = {False: (istr("x-ratelimit-limit-requests"), istr("x-ratelimit-remaining-requests"),
                        istr("x-ratelimit-reset-requests")),
                True: (istr("x-ratelimit-limit-tokens"), istr("x-ratelimit-remaining-tokens"),
                       istr("x-ratelimit-reset-tokens"))}
LIMIT, REMAINING, RESET = istr("X-RateLimit-Limit"), istr("X-RateLimit-Remaining"), istr("X-RateLimit-Reset")
#: The request id every answer carries from its start (the core's ``x-tollway-request-id``, in
#: ``call.response.headers`` before any plugin's): the one header ``put_headers`` copies with its texts.
REQUEST_ID_HEADER = istr("x-tollway-request-id")

# A rule's cell (a list, read by index on the hot path), what it last computed from a debt:
# LO <= debt <= HI: ``remaining`` is LEFT (and its fraction of the limit FRAC; LEFT_TEXT its str,
# made when first shown); T_LO <= debt <= T_HI: the reset text is RESET_TEXT; SAFE: for a rule
# its group does not show, a debt at which its fraction was above the shown rule's (so is it at
# any smaller debt). Empty brackets (inf, -inf) at first.
LO, HI, LEFT, FRAC, LEFT_TEXT, T_LO, T_HI, RESET_TEXT, SAFE = range(9)


def _cell() -> list:
    return [math.inf, -math.inf, -1, 0.0, None, math.inf, -math.inf, None, -math.inf]


@dataclass(frozen=True, slots=True)
class Plan:
    """A key's limits for one model: the rules, and the rules grouped by kind (in the order
    each kind first appears) for the headers, each group with its header names, its rules with
    their places in ``rules`` and their cells, whether the generic X-RateLimit-* headers show it
    (the requests kind, else the tokens kind), what it last wrote ([rule, left text, reset
    text]) and when the same rule is shown again with the same texts (``put_headers``'
    ``held``); ``texts``: the headers last written, in the answer's order, after the request id
    (``x-tollway-request-id``, the one header an answer has before them: ``put_headers``' copy)."""

    rules: tuple[Rule, ...]
    token_rules: tuple[Rule, ...]
    groups: tuple[tuple[tuple[str, str, str], tuple[tuple[Rule, int, list], ...], bool, list, list], ...]
    texts: dict = field(default_factory=dict, compare=False, repr=False)
    #: [the guard: (place, low, high) for each rule, every group's ``held`` at once (None: some group
    #: holds nothing), the generic group's shown rule's place, ``X-RateLimit-Reset``'s second's bracket
    #: (``LO < at <= HI``: its text, ``texts[RESET]``, holds)]
    hold: list = field(default_factory=lambda: [None, 0, _INF, -_INF], compare=False, repr=False)

    @classmethod
    def of(cls, rules: list[Rule]) -> Plan:
        kinds: dict[bool, list[tuple[Rule, int, list]]] = {}
        for i, rule in enumerate(rules):
            kinds.setdefault(rule.tokens, []).append((rule, i, _cell()))
        generic = False not in kinds  # (the requests kind when there is one)
        groups = tuple((HEADER_NAMES[k], tuple(kinds[k]), k == generic, [None, None, None],
                        [None, None, (), _INF, -_INF]) for k in kinds)
        texts: dict = {REQUEST_ID_HEADER: ""}
        texts.update(dict.fromkeys((name for names, *_ in groups for name in names), ""))
        if groups:  # (X-RateLimit-Reset last: written after the others, as the answer had it)
            texts[LIMIT] = texts[REMAINING] = texts[RESET] = ""
        return cls(tuple(rules), tuple(r for r, *_ in kinds.get(True, ())), groups, texts)


_INF = math.inf


def put_headers(out: dict[str, str], plan: Plan, tat_of, now: float, taken: list[Tat] | None = None,
                response: ResponseState | None = None) -> None:
    """Add the headers of ``plan``'s rules at ``now`` to ``out``. ``tat_of(rule.state)`` is a
    rule's ``Tat`` or None; ``taken``, when given, is every rule's ``Tat`` (in ``plan.rules``'
    order) as just taken at ``now`` (``gcra_check``'s, kept by the admission: no look-up;
    its debts are then the resets, never below 0). ``response``, when given, is the answer's
    state whose ``headers`` is ``out``: when ``out`` holds nothing but the request id (the usual
    answer), ``response.headers`` becomes a copy of the plan's texts with that id instead, the
    same names and values in the same order (one dict copy: eleven inserts into ``out``, its
    resize and its walk of ``texts`` cost ~2k instructions more, callgrind)."""
    if taken is None:  # (a refusal, or shared counters: each rule's TAT read, as the admission's would be)
        taken = [(now, reset_of(tat_of(rule.state), now)) for rule in plan.rules]
    texts = plan.texts
    hold = plan.hold
    at: float | None = None  # X-RateLimit-Reset: now + the reset shown (rounded up to the second)
    guard = hold[0]
    if guard is not None:  # every group's held test below at once (_guard): the same texts
        for i, lo, hi in guard:
            if not lo <= taken[i][1] <= hi:
                break
        else:
            at = now + taken[hold[1]][1]
    if at is None:  # (some group's texts may change: each group's rules, then the guard for next time)
        generic_reset = 0.0
        for names, group, generic, shown, held in plan.groups:
            # held: [the place of the rule shown, its cell, the others' (place, cell), the low and high ends
            # of its two brackets' overlap], set when its fraction was below every other's. Its debt inside
            # both brackets (the same texts) and every other rule's at or below its SAFE (a fraction above the
            # shown one's): the same rule, the same texts. (The brackets change only here, in the code below,
            # which then sets held again: the overlap kept is theirs.)
            b_i = held[0]
            if b_i is not None:
                reset = taken[b_i][1]
                if held[3] <= reset <= held[4]:
                    for i, cell in held[2]:
                        if taken[i][1] > cell[8]:
                            break
                    else:
                        if generic:
                            generic_reset = reset
                        continue
            b_frac = _INF
            b_reset = 0.0
            for rule, i, cell in group:
                reset = taken[i][1]  # (its TAT lies that far past now: taken at now)
                if cell[0] <= reset <= cell[1]:  # (LO, HI: literal indexes, the fastest read)
                    frac = cell[3]
                else:
                    left = int((rule.period - reset + EPS) / rule.interval)
                    if left < 0:
                        left = 0
                    if left == cell[2]:  # the same step as the bracket's ends: it now reaches this debt too
                        if reset < cell[0]:
                            cell[0] = reset
                        else:
                            cell[1] = reset
                        frac = cell[3]
                    else:
                        frac = left / rule.limit
                        cell[0] = cell[1] = reset
                        cell[2] = left
                        cell[3] = frac
                        cell[4] = None
                if frac < b_frac or (frac == b_frac and reset > b_reset):
                    best = rule
                    b_i = i
                    b_cell = cell
                    b_reset = reset
                    b_frac = frac
            left_text = b_cell[4]
            if left_text is None:
                left_text = b_cell[4] = str(b_cell[2])
            if b_cell[5] <= b_reset <= b_cell[6]:
                reset_text = b_cell[7]
            else:
                # (duration(), inline for a reset under a second: a Python call fewer)
                reset_text = _MS_TEXT[math.ceil(b_reset * 1000)] if b_reset < 1.0 else duration(b_reset)
                if b_reset < 0.0:  # (no admission's debt, and the texts are not monotone below 0: none kept)
                    b_cell[5], b_cell[6], b_cell[7] = _INF, -_INF, None
                elif reset_text == b_cell[7]:
                    if b_reset < b_cell[5]:
                        b_cell[5] = b_reset
                    else:
                        b_cell[6] = b_reset
                else:
                    b_cell[5] = b_cell[6] = b_reset
                    b_cell[7] = reset_text
            if shown[0] is not best or shown[1] is not left_text or shown[2] is not reset_text:
                limit_name, left_name, reset_name = names
                texts[limit_name] = best.limit_text
                texts[left_name] = left_text
                texts[reset_name] = reset_text
                if generic:
                    texts[LIMIT] = best.limit_text
                    texts[REMAINING] = left_text
                shown[0], shown[1], shown[2] = best, left_text, reset_text
            _hold(held, group, taken, b_i, b_cell, b_frac)
            if generic:
                generic_reset = b_reset
        if not plan.groups:
            return
        _guard(plan.groups, hold)
        at = now + generic_reset
    if not hold[2] < at <= hold[3]:
        _reset_at(texts, hold, at)
    if response is not None and len(out) == 1 and (rid := out.get(REQUEST_ID_HEADER)) is not None:
        texts[REQUEST_ID_HEADER] = rid
        response.headers = texts.copy()
    else:
        _update(out, texts)


def _update(out: dict, texts: dict) -> None:
    """``texts`` into ``out`` but their request id: ``out``'s own, kept where it is, or none."""
    rid = out.get(REQUEST_ID_HEADER)
    if rid is not None:
        texts[REQUEST_ID_HEADER] = rid
        out.update(texts)
    else:
        out.update(texts)
        del out[REQUEST_ID_HEADER]


def _reset_at(texts: dict, hold: list, at: float) -> None:
    """``X-RateLimit-Reset`` at ``at`` into ``texts``, and the bracket of times it holds for."""
    second = math.ceil(at)
    texts[RESET] = _ISO_CACHE.get(second) or iso_at(at)  # (iso_at's memo, read inline)
    hold[2], hold[3] = float(second - 1), float(second)


def _guard(groups: tuple, hold: list) -> None:
    """Every group's held test as one guard (in ``hold``), when each group holds a rule: its
    shown rule's debt within its brackets' overlap, each other rule's at or below its SAFE."""
    guard = []
    for _, _, generic, _, held in groups:
        if held[0] is None:
            hold[0] = None
            return
        guard.append((held[0], held[3], held[4]))
        for i, cell in held[2]:
            guard.append((i, -_INF, cell[8]))
        if generic:
            hold[1] = held[0]
    hold[0] = tuple(guard)


def _hold(held: list, group: tuple, taken: list[Tat], b_i: int, b_cell: list, b_frac: float) -> None:
    """Keep the rule just shown for the next answers when its fraction is below every other
    rule's of the group (no tie for the reset to break: which rule shows then depends on the
    fractions alone), each other rule's debt now as its SAFE; else keep none."""
    others = held[2] if held[1] is b_cell else tuple((i, cell) for _, i, cell in group if cell is not b_cell)
    for i, cell in others:
        if cell[3] == b_frac:
            held[0] = None
            return
        cell[8] = taken[i][1]
    held[0], held[1], held[2] = b_i, b_cell, others
    held[3] = b_cell[0] if b_cell[0] > b_cell[5] else b_cell[5]  # (max and min, without the builtins' calls)
    held[4] = b_cell[1] if b_cell[1] < b_cell[6] else b_cell[6]
