"""Guards: what embeddings are blind to, checked before a semantic hit is served.

Sentence embeddings score "turn on the lights" and "turn off the lights" above
0.85, and "what is 7 times 8" against "7 times 9" higher still: they encode the
topic, not the details that make an answer wrong. Each guard below compares one
such detail between the stored request and the new one, and vetoes the hit when
they differ. Every guard errs towards a miss: a veto costs one upstream call, a
false hit gives a user a wrong answer.

- ``negation``: the number of negations (not, n't, never, no, without, avoid,
  ...) must be equal. Catches "which fruits can dogs eat" / "... not eat".
- ``polarity``: words are mapped to (axis, sign): enable/"turn on"/activate are
  (power, +), disable/"turn off" (power, -); likewise add/remove, install/
  uninstall, increase/decrease, good/bad, pros/cons, max/min, ascending/
  descending, before/after, import/export, encrypt/decrypt, lock/unlock,
  upload/download, allow/block, ... An axis both sides use must carry the
  same signs, so "enable dark mode" may match "turn on dark mode" but never
  "disable dark mode". On the action axes (power, install, connect, lock,
  encrypt, transfer, buy/sell, sort order, case, show/hide, log in/out, zoom)
  one side naming the action and the other not is a veto as well; on the
  others (good/bad, more/less, add/remove...) it is not, because paraphrases
  often drop them ("remove a stain" / "get a stain out").
- ``numbers``: the multiset of numbers must be equal -- digits (``3.12``,
  ``15%``, ``2014``) and number words, ordinals included (five = 5,
  second = 2nd = 2). Catches "convert 5 miles" / "convert 10 miles".
- ``entities``: the set of named things must be equal: capitalised words not
  at the start of a sentence (or at the start, unless a common word), acronyms
  and mixed-case or alphanumeric tokens (NASA, iPhone, S3), anything in
  quotes, and a small case-insensitive list of countries, cities, languages
  and technologies (so lowercase "translate hello to french" / "... german"
  is caught too). Names typed in lowercase and not in the list (e.g. "who is
  obama") are left to the embedding, which separates them well.
- ``code``: when either side contains code (fenced or inline backticks, or
  lines that look like code), the code must be identical after whitespace
  normalisation. A one-character change in code changes the answer.
- ``order``: when both sides have the same content words, and a directional
  word both use (to, into, than, from, vs, over, before, after, under) has
  different words before it, they mean opposite things: "convert JSON to
  XML" / "XML to JSON", "why are cats better pets than dogs" / "dogs ...
  than cats", "fly from London to New York" / "from New York to London".
- ``substitution``: when the two texts are the same sentence with one slot
  swapped (common words before and after covering at least half of each, the
  slots of about the same length) and the slot holds one or two content words
  on each side that are neither the same word (cat/cats, painted/painter) nor
  listed synonyms (write/compose, explain/describe) -- a negating prefix
  (follow/unfollow) never counts as the same word --
  the subject changed: "grow tomatoes indoors" / "outdoors", "vegetarian
  dinner ideas" / "vegan dinner ideas", "legs of a spider" / "of an insect".
  Reworded paraphrases do not share such a frame, so they pass.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .wordlists import (
    COMMON_WORDS,
    CONTRACTED_NOT,
    CONTRACTIONS,
    GAZETTEER,
    NEGATIONS,
    NUMBER_WORDS,
    PHRASAL_POLARITY,
    POLAR_WORDS,
    POLARITY,
    STOPWORDS,
    SYNONYMS,
)

ALL_GUARDS = ("negation", "polarity", "numbers", "entities", "code", "order", "substitution")
# Axes where the action itself is named: one side naming it and the other not is a veto too.
STRICT_AXES = frozenset(("power", "install", "connect", "lock", "crypt", "transfer", "trade", "order", "case",
                         "visible", "session", "zoom"))
NEGATING_PREFIXES = frozenset(("un", "dis", "non", "in", "im", "il", "ir", "de", "anti", "mis", "non-"))
DIRECTIONAL = frozenset(("to", "into", "than", "from", "vs", "versus", "over", "before", "after", "under"))

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:['’][A-Za-z]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|“([^”\n]{1,200})”|(?<![A-Za-z])'([^'\n]{1,200})'(?![A-Za-z])")
_CODE_LINE = re.compile(r"(;\s*$|[{}]\s*$|=>|==|!=|\bdef |\bfunction\b|\breturn\b|\bimport |#include|</?\w+>"
                        r"|\w\(.*\)\s*$)")
_SENTENCE_END = re.compile(r"[.!?:\n]")
_PHRASAL = re.compile(r"\b(turn|turned|turning|switch|switched|switching|power|powered|zoom|log|logged|sign|"
                      r"signed|opt|opted|went|go|goes|going|gone|scroll|speed|slow|back)\s+(?:\w+\s+){0,2}?"
                      r"(on|off|in|out|up|down)\b", re.I)


@dataclass(slots=True, frozen=True)
class Features:
    """The details of one text that the guards compare (computed once per entry)."""

    negations: int
    polarity: frozenset[tuple[str, int]]
    numbers: tuple[str, ...]
    entities: frozenset[str]
    code: tuple[str, ...]
    content: tuple[str, ...]
    # For each occurrence of a directional word: (word, n-th occurrence) -> the content words before it.
    splits: tuple[tuple[tuple[str, int], tuple[str, ...]], ...]
    frame: tuple[str, ...]  # the prose's words, lowercase, contractions expanded


def _norm_number(tok: str) -> str:
    """1,000 -> 1000; 007 -> 7; 3.10 stays 3.10 (a version is not a decimal)."""
    tok = tok.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", tok) else tok.replace(",", ".")
    return tok.lstrip("0") or "0" if "." not in tok else tok


def _strip_code(text: str) -> tuple[str, list[str]]:
    code = [" ".join(block.split()) for block in _FENCE.findall(text)]
    text = _FENCE.sub(" ", text)
    code += [" ".join(snippet.split()) for snippet in _INLINE.findall(text)]
    text = _INLINE.sub(" ", text)
    prose = []
    for line in text.split("\n"):
        if _CODE_LINE.search(line) and sum(not c.isalnum() and not c.isspace() for c in line) >= 2:
            code.append(" ".join(line.split()))
        else:
            prose.append(line)
    return "\n".join(prose), code


def features(text: str) -> Features:
    """Extract what the guards compare from one conversation's text."""
    prose, code = _strip_code(text)
    lower = prose.lower()
    tokens = _WORD.findall(prose)
    lower_tokens = [t.lower().replace("’", "'") for t in tokens]

    negations = 0
    for t in lower_tokens:
        if t in NEGATIONS or t.endswith("n't"):
            negations += 1

    polarity: set[tuple[str, int]] = set()
    for m in _PHRASAL.finditer(lower):
        key = f"{m.group(1).lower()} {m.group(2).lower()}"
        base = PHRASAL_POLARITY.get(key) or PHRASAL_POLARITY.get(f"* {m.group(2).lower()}")
        if base:
            polarity.add(base)
    for t in lower_tokens:
        hit = POLARITY.get(t)
        if hit:
            polarity.add(hit)

    numbers = []
    for t in lower_tokens:
        if _NUMBER.fullmatch(t):
            numbers.append(_norm_number(t))
        elif t in NUMBER_WORDS:
            numbers.append(NUMBER_WORDS[t])

    entities: set[str] = set()
    for groups in _QUOTED.findall(prose):
        quoted = next(g for g in groups if g)
        entities.add('"' + " ".join(quoted.lower().split()) + '"')
    lowercase_words = {t for t in tokens if t[0].islower()}
    sentence_start = True
    pos = 0
    for m in _WORD.finditer(prose):
        between = prose[pos:m.start()]
        if _SENTENCE_END.search(between) or pos == 0:
            sentence_start = True
        pos = m.end()
        word = m.group(0)
        base = re.sub(r"['’]s$", "", word)
        low = base.lower()
        starts_sentence = sentence_start
        sentence_start = False
        if low in GAZETTEER:
            entities.add(GAZETTEER[low])
            continue
        if base[0].isdigit() or len(base) < 2:
            continue
        mixed = any(c.isupper() for c in base[1:]) or (any(c.isdigit() for c in base) and base[0].isalpha())
        if mixed:
            entities.add(low)
        elif base[0].isupper() and not (starts_sentence and low in COMMON_WORDS):
            if starts_sentence and low in lowercase_words:
                continue  # a common word that happens to start the sentence: used lowercase elsewhere
            entities.add(low)

    content = []
    splits: dict[tuple[str, int], tuple[str, ...]] = {}
    seen: Counter[str] = Counter()
    for t in lower_tokens:
        if t in DIRECTIONAL:
            splits[(t, seen[t])] = tuple(sorted(content))
            seen[t] += 1
        elif t not in STOPWORDS:
            content.append(t)
    return Features(negations, frozenset(polarity), tuple(sorted(numbers)), frozenset(entities), tuple(code),
                    tuple(content), tuple(sorted(splits.items())), _frame(lower_tokens))


def _frame(tokens: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for t in tokens:
        head, _, tail = t.partition("'")
        if not tail:
            out.append(t)
        elif tail == "t" and head.endswith("n"):  # don't, can't, isn't
            out.extend((CONTRACTED_NOT.get(head, head[:-1]), "not"))
        elif tail == "s":
            out.extend((head, "is") if head in STOPWORDS else (head,))  # what's -> what is; Apple's -> apple
        else:
            out.extend((head, CONTRACTIONS.get(tail, tail)))
    return tuple(out)


def _same_word(x: str, y: str) -> bool:
    if x == y:
        return True
    short, long_ = sorted((x, y), key=len)
    if long_.endswith(short) and long_[:-len(short)] in NEGATING_PREFIXES:
        return False  # follow / unfollow, agree / disagree
    if len(short) >= 3 and long_.startswith(short) and len(long_) - len(short) <= 4:
        return True  # cat / cats, vaccine / vaccines, run / running
    if len(short) >= 5 and long_.endswith(short):
        return True  # planes / airplanes
    stem = 0
    while stem < len(short) and x[stem] == y[stem]:
        stem += 1
    if stem >= 5 and stem >= len(short) - 2:
        return True  # painted / painter, organise / organize
    return bool(SYNONYMS.get(x, {x}) & SYNONYMS.get(y, {y}))


def _substituted(a: Features, b: Features) -> bool:
    """The same sentence frame with one content word (or two) replaced by an unrelated one."""
    ta, tb = a.frame, b.frame
    if ta == tb or not ta or not tb:
        return False
    p = 0
    while p < min(len(ta), len(tb)) and ta[p] == tb[p]:
        p += 1
    q = 0
    while q < min(len(ta), len(tb)) - p and ta[-1 - q] == tb[-1 - q]:
        q += 1
    if (p + q) / max(len(ta), len(tb)) < 0.5:
        return False  # reworded, not a swapped slot
    span_a, span_b = ta[p:len(ta) - q], tb[p:len(tb) - q]
    if abs(len(span_a) - len(span_b)) > 1:
        return False  # restructured ("who wrote" / "who is the author of"), not a slot swap
    xa = [w for w in span_a if w not in STOPWORDS and w not in POLAR_WORDS and not w[0].isdigit()]
    xb = [w for w in span_b if w not in STOPWORDS and w not in POLAR_WORDS and not w[0].isdigit()]
    if not xa or not xb or len(xa) > 2 or len(xb) > 2:
        return False
    left_a = [w for w in xa if not any(_same_word(w, v) for v in xb)]
    left_b = [w for w in xb if not any(_same_word(w, v) for v in xa)]
    return bool(left_a and left_b)


def _polarity_differs(a: frozenset[tuple[str, int]], b: frozenset[tuple[str, int]]) -> bool:
    """An axis both sides use with different signs; or a strict axis only one side uses."""
    axes_a: dict[str, set[int]] = {}
    axes_b: dict[str, set[int]] = {}
    for axis, sign in a:
        axes_a.setdefault(axis, set()).add(sign)
    for axis, sign in b:
        axes_b.setdefault(axis, set()).add(sign)
    for axis in axes_a.keys() | axes_b.keys():
        sa, sb = axes_a.get(axis), axes_b.get(axis)
        if sa is not None and sb is not None:
            if sa != sb:
                return True
        elif axis in STRICT_AXES:
            return True
    return False


def _order_differs(a: Features, b: Features) -> bool:
    """Same content words, split differently around a directional word both use."""
    if a.content == b.content or Counter(a.content) != Counter(b.content):
        return False
    splits_b = dict(b.splits)
    return any(word in splits_b and before != splits_b[word] for word, before in a.splits)


def check(a: Features, b: Features, enabled: tuple[str, ...] = ALL_GUARDS) -> str | None:
    """The name of the first guard that vetoes a semantic hit between a and b, or None."""
    if "negation" in enabled and min(a.negations, 3) != min(b.negations, 3):
        return "negation"
    if "polarity" in enabled and a.polarity != b.polarity and _polarity_differs(a.polarity, b.polarity):
        return "polarity"
    if "numbers" in enabled and a.numbers != b.numbers:
        return "numbers"
    if "entities" in enabled and a.entities != b.entities:
        return "entities"
    if "code" in enabled and a.code != b.code:
        return "code"
    if "order" in enabled and _order_differs(a, b):
        return "order"
    if "substitution" in enabled and _substituted(a, b):
        return "substitution"
    return None
