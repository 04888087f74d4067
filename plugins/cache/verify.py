"""The semantic layer's second stage: may the stored answer to ``a`` be served for ``b``?

A candidate from the embedding search is served only when every difference
between the two conversations is *explained* as one that cannot change the
answer. Both sides are normalised (``textnorm.py``: numbers, arithmetic,
politeness, articles, auxiliaries -> tense) and their tokens aligned:

1. identical tokens match;
2. a **typo** matches: a word outside the embedder's vocabulary within one
   edit (insert, delete, substitute, swap) of a word on the other side, or two
   adjacent words written as one ("light bulb" / "lightbulb");
3. a **synonym** matches: two words whose own embeddings (the same MiniLM
   model, each word alone) have cosine >= ``synonym_min`` -- fridge /
   refrigerator, colour / color, sofa / couch -- unless one is the other with a
   negating prefix (legal / illegal, mute / unmute).

Anything left over -- a quantifier, a modal, a word that names another thing,
a different instruction, another number -- refuses the hit, whatever it is:
an unknown word blocks by default instead of slipping past a list. Then:

- the tenses marked by the auxiliaries must agree (when both sides mark one);
- arithmetic must have the same value and share an operand;
- the matched tokens must come in the same order, or differ by one block moved
  ("without a freezer, how do I ..." / "how do I ... without a freezer") --
  never by two words trading places (cheetah faster than lion / lion faster
  than cheetah, Celsius to Fahrenheit / Fahrenheit to Celsius).

The verdict is the reason for a refusal (``"words: all / some"``) or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .textnorm import Normalised
from .wordlists import EQUIVALENT

NEGATING_PREFIXES = ("un", "dis", "non", "in", "im", "il", "ir", "de", "anti", "mis")
SYNONYM_MIN = 0.9
#: Two spellings of one word need less: their embeddings differ by the spelling alone.
SPELLING_BONUS = 0.1
#: Prepositions that only link a noun to its modifier ("a recipe for banana bread" / "a banana bread recipe").
LINKING = frozenset(("in", "for", "on", "about"))
#: Ways to ask for the same kind of answer: words from one group may stand for each other and nothing else
#: ("what is X" / "explain X" / "describe X"; "list X" / "give X" / "suggest X" / "what are X").
FRAMES = (frozenset(("what", "explain", "describe", "define")),
          frozenset(("what", "give", "list", "suggest", "recommend", "name", "show", "provide", "share")),
          frozenset(("write", "compose", "draft")))


@dataclass(slots=True)
class Alignment:
    """Tokens of b matched so far, and what is left on each side."""

    mapping: dict[int, int] = field(default_factory=dict)  # index in a -> index in b
    left_a: list[int] = field(default_factory=list)
    left_b: list[int] = field(default_factory=list)
    merged_a: list[int] = field(default_factory=list)  # second halves of compounds, folded into the first
    merged_b: list[int] = field(default_factory=list)


def _within_one_edit(x: str, y: str) -> bool:
    """Damerau-Levenshtein distance <= 1."""
    if x == y:
        return True
    lx, ly = len(x), len(y)
    if abs(lx - ly) > 1:
        return False
    if lx == ly:
        diff = [i for i in range(lx) if x[i] != y[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and x[diff[0]] == y[diff[1]]
                                  and x[diff[1]] == y[diff[0]])
    short, long_ = (x, y) if lx < ly else (y, x)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1:]


def _is_word(tok: str) -> bool:
    return tok[0].isalpha()


def align(a: Normalised, b: Normalised, vocabulary: frozenset[str]) -> Alignment:
    """Exact, typo and compound matches between the token sequences of a and b."""
    ta, tb = a.tokens, b.tokens
    free_b: dict[str, list[int]] = {}
    for j, t in enumerate(tb):
        free_b.setdefault(t, []).append(j)
    al = Alignment()
    for i, t in enumerate(ta):
        js = free_b.get(t)
        if js:
            al.mapping[i] = js.pop(0)
        else:
            al.left_a.append(i)
    used = set(al.mapping.values())
    al.left_b = [j for j in range(len(tb)) if j not in used]
    if not al.left_a and not al.left_b:
        return al
    # Typos: one side's word is not a known word and is one edit from the other's.
    for i in list(al.left_a):
        x = ta[i]
        if not _is_word(x):
            continue
        for j in al.left_b:
            y = tb[j]
            if (_is_word(y) and min(len(x), len(y)) >= 4 and (x not in vocabulary or y not in vocabulary)
                    and _within_one_edit(x, y)):
                al.mapping[i] = j
                al.left_a.remove(i)
                al.left_b.remove(j)
                break
    # Compounds: "light bulb" / "lightbulb" (either side).
    for (s1, s2, left1, left2, flip) in ((ta, tb, al.left_a, al.left_b, False), (tb, ta, al.left_b, al.left_a, True)):
        for i in list(left1):
            if i + 1 in left1 and s1[i] + s1[i + 1] in {s2[j] for j in left2}:
                j = next(j for j in left2 if s2[j] == s1[i] + s1[i + 1])
                left1.remove(i)
                left1.remove(i + 1)
                left2.remove(j)
                if flip:
                    al.mapping[j] = i
                    al.merged_b.append(i + 1)
                else:
                    al.mapping[i] = j
                    al.merged_a.append(i + 1)
    return al


def words_to_compare(a: Normalised, b: Normalised, al: Alignment) -> list[str]:
    """The leftover words whose embeddings the synonym test needs."""
    if not al.left_a or not al.left_b or len(al.left_a) != len(al.left_b):
        return []
    return [a.tokens[i] for i in al.left_a if _is_word(a.tokens[i])] + \
           [b.tokens[j] for j in al.left_b if _is_word(b.tokens[j])]


def _other_prefix(x: str, y: str) -> bool:
    """One word is the other negated (legal / illegal), or both share a stem with different prefixes
    (uppercase / lowercase, upload / download, increase / decrease): never the same meaning."""
    short, long_ = sorted((x, y), key=len)
    if any(long_ == p + short or long_ == p + "-" + short for p in NEGATING_PREFIXES):
        return True
    k = 0
    while k < len(short) and short[-1 - k] == long_[-1 - k]:
        k += 1
    return k >= 4 and k < len(short)


def _maker_named(n: Normalised, left: list[int], matched: set[int]) -> bool:
    """Words only one side has are a maker's name right before a product's name both have
    ("Apple AirPods" / "AirPods", "the Samsung Galaxy S23" / "the Galaxy S23")."""
    toks = n.tokens
    for i in left:
        if toks[i] not in n.names:
            return False
        run = []
        k = i + 1
        while k < len(toks) and k in matched and (toks[k] in n.names or toks[k].startswith("#")):
            run.append(toks[k])
            k += 1
        if not run or not (len(run) >= 2 or run[0] in n.brands or toks[i] in n.brands):
            return False  # one plain capitalised word after it: "New York" / "York" is not a maker's name
    return True


def _one_block_moved(sa: list[str], sb: list[str]) -> bool:
    """sb is sa with one contiguous block moved elsewhere (never two single words trading places)."""
    p = 0
    while p < len(sa) and sa[p] == sb[p]:
        p += 1
    q = 0
    while q < len(sa) - p and sa[-1 - q] == sb[-1 - q]:
        q += 1
    ma, mb = sa[p:len(sa) - q], sb[p:len(sb) - q]
    if len(ma) < 3:
        return False
    n = len(ma)
    return any(ma[k:] + ma[:k] == mb for k in range(1, n))


def decide(a: Normalised, b: Normalised, al: Alignment, similarity: Callable[[str, str], float] | None,
           synonym_min: float = SYNONYM_MIN) -> str | None:
    """None when b may be answered with a's answer; else the reason it may not."""
    if a.tenses and b.tenses and a.tenses != b.tenses:
        return "tense"
    # The same numbers, not just the same value: "144 / 12" and "the square root of 144" are both
    # 12, but the answer to one says how it got there in terms the other did not ask about.
    if (a.operands or b.operands) and a.operands != b.operands:
        return "arithmetic"
    mapping = dict(al.mapping)
    left_a, left_b = list(al.left_a), list(al.left_b)
    seq_a = {i: t for i, t in enumerate(a.tokens)}
    seq_b = {j: t for j, t in enumerate(b.tokens)}
    for i in al.merged_a:
        del seq_a[i]
    for j in al.merged_b:
        del seq_b[j]
    # A preposition only one side has, everything else matched: "a list in Python" / "a Python list".
    if not (left_a and left_b) and all((a.tokens[i] if left_a else b.tokens[i]) in LINKING for i in left_a or left_b):
        for i in left_a:
            del seq_a[i]
        for j in left_b:
            del seq_b[j]
        left_a, left_b = [], []
    words_a, words_b = {a.tokens[i] for i in left_a}, {b.tokens[j] for j in left_b}
    if left_a and left_b and words_a != words_b and any(
            words_a | words_b <= f and not (f is FRAMES[0] and (a.definite or b.definite)) for f in FRAMES):
        for i in left_a:
            seq_a[i] = "§frame"
        for j in left_b:
            seq_b[j] = "§frame"
        seq_a = _squeeze(seq_a)
        seq_b = _squeeze(seq_b)
        left_a, left_b = [], []
    if left_a and not left_b and _maker_named(a, left_a, set(mapping)):
        for i in left_a:
            del seq_a[i]
        left_a = []
    elif left_b and not left_a and _maker_named(b, left_b, set(mapping.values())):
        for j in left_b:
            del seq_b[j]
        left_b = []
    for i, j in mapping.items():
        seq_a[i] = b.tokens[j]
    if left_a or left_b:
        if not left_a or not left_b:
            return _words(a, b, left_a, left_b)
        similarity = _with_equivalences(similarity)
        spans_a, spans_b = _spans(left_a), _spans(left_b)
        if len(left_a) == len(left_b) and _synonyms(a, b, left_a, left_b, similarity, synonym_min, mapping):
            for i, j in mapping.items():
                seq_a[i] = b.tokens[j]
        elif len(spans_a) == len(spans_b) <= 2 and all(
                _phrase_synonym(a, b, sa, sb, similarity, synonym_min)
                for sa, sb in zip(spans_a, spans_b, strict=True)):
            for k, (sa, sb) in enumerate(zip(spans_a, spans_b, strict=True)):
                seq_a[sa[0]] = seq_b[sb[0]] = f"§{k}"
                for i in sa[1:]:
                    del seq_a[i]
                for j in sb[1:]:
                    del seq_b[j]
        else:
            return _words(a, b, left_a, left_b)
    order_a = [seq_a[i] for i in sorted(seq_a)]
    order_b = [seq_b[j] for j in sorted(seq_b)]
    if len(order_a) != len(order_b):
        return "order"
    if order_a != order_b and not _one_block_moved(order_a, order_b):
        return "order"
    return None


def _with_equivalences(similarity: Callable[[str, str], float] | None) -> Callable[[str, str], float]:
    """Known equivalences (British / American vocabulary, a few plain synonyms) score 1; the rest
    what the embedder says (0 without one: then only the known equivalences pass)."""
    def judged(x: str, y: str) -> float:
        if (x, y) in EQUIVALENT:
            return 1.0
        return similarity(x, y) if similarity is not None else 0.0
    return judged


def _squeeze(seq: dict[int, str]) -> dict[int, str]:
    """Runs of the same placeholder folded into one."""
    out: dict[int, str] = {}
    prev = None
    for i in sorted(seq):
        if not (seq[i] == "§frame" and prev == "§frame"):
            out[i] = seq[i]
        prev = seq[i]
    return out


def _spelling_variant(x: str, y: str) -> bool:
    """At most two letters changed, inserted or removed, in words of four letters or more."""
    if min(len(x), len(y)) < 4 or abs(len(x) - len(y)) > 2:
        return False
    prev = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        cur = [i]
        for j, cy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (cx != cy)))
        prev = cur
    return prev[-1] <= 2


def _spans(idx: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(idx):
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _comparable(n: Normalised, i: int) -> bool:
    """A word the synonym test may judge: not a number, quote, code or a name."""
    t = n.tokens[i]
    return _is_word(t) and t not in n.names


def _synonyms(a: Normalised, b: Normalised, left_a: list[int], left_b: list[int],
              similarity: Callable[[str, str], float], synonym_min: float, mapping: dict[int, int]) -> bool:
    """Pair every leftover word of a with one of b whose meaning is the same (greedy, best first)."""
    free = list(left_b)
    found = {}
    for i in left_a:
        x = a.tokens[i]
        best, best_j = synonym_min, None
        for j in free:
            y = b.tokens[j]
            if not (_comparable(a, i) and _comparable(b, j)) or _other_prefix(x, y):
                continue
            s = similarity(x, y)
            if _spelling_variant(x, y):  # colour / color, organise / organize, tyre / tire
                s += SPELLING_BONUS
            if s >= best:
                best, best_j = s, j
        if best_j is None:
            return False
        found[i] = best_j
        free.remove(best_j)
    mapping.update(found)
    return True


def _phrase_synonym(a: Normalised, b: Normalised, sa: list[int], sb: list[int],
                    similarity: Callable[[str, str], float], synonym_min: float) -> bool:
    """Two short phrases in the same place that say the same ("how tall" / "what height")."""
    if len(sa) > 3 or len(sb) > 3 or not all(_comparable(a, i) for i in sa) or \
            not all(_comparable(b, j) for j in sb):
        return False
    x, y = " ".join(a.tokens[i] for i in sa), " ".join(b.tokens[j] for j in sb)
    if len(sa) == 1 and len(sb) == 1 and _other_prefix(x, y):
        return False
    return similarity(x, y) >= synonym_min


def _words(a: Normalised, b: Normalised, left_a: list[int], left_b: list[int]) -> str:
    wa = " ".join(a.tokens[i] for i in left_a[:3]) or "-"
    wb = " ".join(b.tokens[j] for j in left_b[:3]) or "-"
    return f"words: {wa} / {wb}"
