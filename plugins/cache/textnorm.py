"""Text -> the normalised token sequence that ``verify.py`` aligns.

What is normalised here is *form* that never carries meaning in a question:
case, punctuation, contractions, the way a number is written (``3``, ``three``,
``third``, ``3rd``, ``III``), how an arithmetic question is phrased (its value
is computed), politeness and discourse wrapping ("hey, can you tell me ..."),
articles, the speaker and addressee (I / you / my), and the auxiliaries (kept
only as the tense they mark). Everything else -- every content word,
quantifier, modal, preposition, negation, quoted span and code span -- stays a
token, so it must be matched by the other side or the hit is refused.

These are grammar's closed classes, not lists of "dangerous" words: a word
this module has never heard of stays a token and blocks a hit by default.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass

from .wordlists import CONTRACTED_NOT, CONTRACTIONS

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_ORDINALS = ["zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
             "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
             "eighteenth", "nineteenth"]
CARDINAL = {w: i for i, w in enumerate(_ONES)} | _TENS | {"hundred": 100, "thousand": 1000}
ORDINAL = {w: i for i, w in enumerate(_ORDINALS)} | {w[:-1] + "ieth": v for w, v in _TENS.items()}
FRACTIONS = {"half": 2, "third": 3, "quarter": 4, "fifth": 5, "tenth": 10}

#: Discourse and politeness wrapping: removed wherever it stands.
_FILLER = re.compile(
    r"\b(?:(?:hey|hi|hello) there|excuse me|i have a (?:quick )?question|(?:i )?need (?:some )?help(?: with this)?"
    r"|would you mind(?: explaining| telling me)?|do you (?:happen to )?know|(?:any|got any) idea"
    r"|i(?:'d| would) (?:really )?appreciate it if you could(?: tell me)?"
    r"|(?:can|could) (?:someone|anyone|somebody)(?: please)?(?: tell me)?"
    r"|hey|hi|hello|yo|ok(?:ay)?|um+|uh+|so|well|please|kindly|just wondering|quick (?:question|q)"
    r"|thanks?(?: you)?(?: (?:so|very) much| a lot)?(?: in advance)?"
    r"|sorry if this is a (?:dumb|silly|stupid) question(?:,? but)?"
    r"|(?:i am|i'm|just) curious|out of curiosity|i was wondering(?: if you could tell me)?"
    r"|i(?:'d| would) like to know|i (?:need|want) to know|(?:can|could|would|will) you(?: please)?(?: kindly)?"
    r"(?: help me)?(?: tell me| let me know)?|tell me|help me)\b[,:!.]?")
_TELL_ME_THE = re.compile(r"\btell me the\b")
_WHAT_IS_THE = re.compile(r"\b(what(?: is|'s| are| was| were)) the\b")
_HOW_TO = re.compile(r"\bhow (?:do|can|could|should|would|might) (?:i|you|we|one)\b|\bwhat(?: is|'s) the way to\b")
#: Same question, other words: "explain how X works" asks "how does X work"; "which" is "what"; "what year" "when".
_FRAMES = ((re.compile(r"\b(?:explain|describe)(?: to me)? (?=(?:what|how|why|when|where|who|which)\b)"), ""),
           (re.compile(r"\bwhich\b"), "what"), (re.compile(r"\b(?:in )?what year\b"), "when"),
           # A dimension asked with its adjective or its noun: "how tall is it" / "what is its height".
           (re.compile(r"\bhow (tall|high|big|large|old|far|fast|heavy|deep|wide)\b"),
            lambda m: "what " + _DIMENSIONS[m.group(1)]))
#: Constructions that ask the same question in other words (run after the auxiliaries' "how do I" -> "how to").
_CONSTRUCTIONS = (
    (re.compile(r"\bwhat makes\b"), "why"),
    # "Apple's CEO?" / "the CEO of Apple?" (a one-word owner and a one-word thing, ending the question)
    (re.compile(r"\b(?!(?:what|who|where|when|why|how|which|it|that|there|here|he|she|let)')(\w+)'s (\w+)"
                r"(?=\s*[?.!,]|\s*$)"), r"\2 of \1"),
    # "how is X different from Y" / "how do X and Y differ" / "what is the difference between X and Y"
    (re.compile(r"\bwhat(?: is|'s| are) the differences? between\b"), "difference between"),
    (re.compile(r"\bhow (?:is|are|do|does|to) (.+?) (?:differ|different) from (.+?)(?=[?.!]|$)"),
     r"difference between \1 and \2"),
    (re.compile(r"\bhow (?:do|does|to) (.+?) and (.+?) differ\b"), r"difference between \1 and \2"),
    # "how do you say X in L" / "translate X into L"
    (re.compile(r"\bhow (?:to|would you) say (.+?) in (\w+)"), r"translate \1 into \2"),
    # "who is the author of" / "who wrote"; "who was the painter of" / "who painted" (agent noun -> verb)
    (re.compile(r"\bwho (?:is|was) the (?:author|writer) of\b"), "who wrote"),
    (re.compile(r"\bwho (?:is|was) (?:the|its|his|her|their) (\w{3,}?)(?:er|or)(?: of)?\b"), r"who \1ed"),
    # "what is the meaning of (the word) X" / "what does X mean"
    (re.compile(r"\bwhat(?: is|'s) the meaning of(?: the word)?\b"), "what mean"),
    (re.compile(r"\bwhat (?:does|do) (.+?) mean\b"), r"what mean \1"),
    (re.compile(r"\bhow many people live there\b"), "what population"),
    (re.compile(r"\bhow many people live in\b"), "what population"),
    # "what is she famous for" / "what is she best known for"; "the capital city of X" / "the capital of X"
    (re.compile(r"\b(?:best |most |well |mainly )?known for\b"), "famous for"),
    (re.compile(r"\bcapital city\b"), "capital"),
    # "when is the best time to X" / "what is the best time to X"
    (re.compile(r"\bwhen(?: is|'s) the (best|worst|right|ideal) time\b"), r"what is the \1 time"),
    (re.compile(r"\bwhat(?: is| are)?(?: the)? number of\b"), "how many"),
    # "how long is it" / "what is its length" (how long *does it take* is another question)
    (re.compile(r"\bhow long (is|are|was|were)\b"), r"what length \1"),
    # "where is X located" / "where is X"
    (re.compile(r"\b(where (?:is|are|was|were) .+?) located\b"), r"\1"),
    # "what is the function / purpose / job / role of X" / "what does X do"
    (re.compile(r"\bwhat(?: is|'s| are) the (?:function|purpose|job|role)s? of (.+?)(?=[?.!]|$)"),
     r"what does \1 do"),
    # "how do I know if" / "how can I tell whether"
    (re.compile(r"\b(?:know|tell) (?:if|whether)\b"), "know if"),
    # "what is the best way to X" / "how should I X" / "how do I X"
    (re.compile(r"\bwhat(?: is|'s) the (?:best|right|proper|correct) (?:way|method) to\b"), "how to"),
    # "what causes X" / "why does X happen"
    (re.compile(r"\bwhat causes? (.+?)(?=\s*[?.!]|\s*$)"), r"why \1 happen"),
    (re.compile(r"\bwhy (?:do|does) (.+?) happen\b"), r"why \1 happen"),
    # "what does X stand for" / "what is X short for"
    (re.compile(r"\bwhat(?: is|'s) (.+?) short for\b"), r"what does \1 stand for"),
    # "what are the symptoms of X" / "what symptoms does X cause"; "what features does X have"
    (re.compile(r"\bwhat (\w+) (?:does|do|can) (.+?) (?:cause|have)(?=\s*[?.!]|\s*$)"), r"what are the \1 of \2"),
    # "explain X in simple terms" / "explain X simply"
    (re.compile(r"\bin (?:simple|plain|layman'?s?|easy) (?:terms|words|english)\b|\bin a simple way\b"), "simply"),
    # "what is the boiling point of X" / "at what temperature does X boil"
    (re.compile(r"\b(?:at )?what temperature (?:does|do) (.+?) (boil|freeze|melt)(?: at)?\b"),
     lambda m: f"what {_POINTS[m.group(2)]} point of {m.group(1)}"),
    # "what is the origin of X" / "where does X come from"
    (re.compile(r"\bwhere (?:does|do|did) (.+?) come from\b"), r"what origin of \1"),
    (re.compile(r"\bwhat(?: is|'s) the origin of\b"), "what origin of"),
    # "give me a summary of X" / "summarize X"
    (re.compile(r"\b(?:give|write|provide)(?: me)? (?:a )?summary of\b|\bsum up\b"), "summarize"),
    # "turn on X" / "enable X"
    (re.compile(r"\b(?:turn|switch) on\b"), "enable"),
    (re.compile(r"\b(?:turn|switch) off\b"), "disable"),
)
_POINTS = {"boil": "boiling", "freeze": "freezing", "melt": "melting"}
#: Chat spellings of closed-class words ("whats", "u", "dont").
_CHAT = {"ur": "your", "u": "you", "gimme": "give me", "lemme": "let me",
         "pls": "please", "plz": "please", "thx": "thanks", "im": "i am",
         "whats": "what is", "hows": "how is", "wheres": "where is", "whos": "who is", "whens": "when is",
         "dont": "do not", "doesnt": "does not", "didnt": "did not", "cant": "can not", "isnt": "is not",
         "arent": "are not", "wont": "will not", "wasnt": "was not", "cannot": "can not"}
_CHAT_RE = re.compile(r"\b(" + "|".join(_CHAT) + r")\b")
_DIMENSIONS = {"tall": "height", "high": "height", "big": "size", "large": "size", "old": "age", "far": "distance",
               "fast": "speed", "heavy": "weight", "deep": "depth", "wide": "width"}
_QUOTED = re.compile(r"\"([^\"\n]{1,300})\"|“([^”\n]{1,300})”|(?<![A-Za-z])'([^'\n]{1,300})'(?![A-Za-z])")
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)?|[%^*/+×÷=<>-]")
_ROMAN = re.compile(r"(?<![\w'])(M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3}))(?![\w'])")
_ROMAN_VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}

#: Dropped: articles, the speaker and the addressee, "of" (table salt's formula = formula of table salt).
DROP = frozenset(["a", "an", "the", "i", "me", "my", "you", "your", "of", "'s", "it", "its"])
#: Auxiliaries: dropped as words, kept as the tense they mark.
TENSE = {**dict.fromkeys(["is", "are", "am", "do", "does", "has", "have"], "present"),
         **dict.fromkeys(["was", "were", "did", "had"], "past"), **dict.fromkeys(["will", "shall"], "future")}
#: Words that frame an arithmetic question and nothing else ("what is 7 x 8", "calculate 7 x 8").
_ARITH_FRAME = frozenset(["what", "how", "much", "many", "is", "equals", "equal", "calculate", "compute", "work",
                          "out", "does", "make", "give", "get", "if", "when", "result", "answer", "solve"])

_OPS = {"times": "*", "x": "*", "×": "*", "*": "*", "multiplied by": "*", "divided by": "/", "/": "/", "÷": "/",
        "over": "/", "plus": "+", "+": "+", "added to": "+", "minus": "-", "-": "-", "to the power of": "**",
        "^": "**"}
_OP_RE = "|".join(sorted((re.escape(k) for k in _OPS), key=len, reverse=True))
_NUM = r"\d+(?:\.\d+)?"
_CHAIN = re.compile(rf"(?<![\w.])({_NUM})((?:\s*(?:{_OP_RE})\s*{_NUM})+)(?!\w|\.\d)")
_CHAIN_PART = re.compile(rf"\s*({_OP_RE})\s*({_NUM})")
_PHRASES = (  # (pattern, function of the numbers found) -- checked before the operator chains
    (re.compile(rf"\bsubtract ({_NUM}) from ({_NUM})"), lambda a, b: (f"{b}-{a}", (a, b))),
    (re.compile(rf"\btake (?:away )?({_NUM}) (?:away )?from ({_NUM})"), lambda a, b: (f"{b}-{a}", (a, b))),
    (re.compile(rf"\b({_NUM}) (?:take away|less) ({_NUM})"), lambda a, b: (f"{a}-{b}", (a, b))),
    (re.compile(rf"\bmultiply ({_NUM}) (?:by|and|with) ({_NUM})"), lambda a, b: (f"{a}*{b}", (a, b))),
    (re.compile(rf"\bdivide ({_NUM}) by ({_NUM})"), lambda a, b: (f"{a}/{b}", (a, b))),
    (re.compile(rf"\badd ({_NUM}) to ({_NUM})"), lambda a, b: (f"{b}+{a}", (a, b))),
    (re.compile(rf"\b(double|triple|halve) ({_NUM})"), lambda w, a: (f"{a}{_SCALE[w]}", (a, _SCALE[w][1:]))),
    (re.compile(rf"\b(?:the )?(square|cube) of ({_NUM})"),
     lambda w, a: (f"{a}**{2 if w == 'square' else 3}", (a, "2" if w == "square" else "3"))),
    (re.compile(rf"\b(?:the )?cube root of ({_NUM})"), lambda a: (f"{a}**(1/3)", (a, "0.333333"))),
    (re.compile(rf"({_NUM}) (?:raised )?to the ({_NUM}) power"), lambda a, b: (f"{a}**{b}", (a, b))),
    (re.compile(rf"({_NUM}) raised to(?: the power of)? ({_NUM})"), lambda a, b: (f"{a}**{b}", (a, b))),
    (re.compile(rf"\b(?:the )?total of ({_NUM})((?:,? (?:and )?{_NUM})+)"), None),
    (re.compile(rf"\b(?:the )?(sum|product) of ({_NUM})((?:,? (?:and )?{_NUM})+)"), None),
    (re.compile(rf"\badd ({_NUM})((?:,? (?:and )?{_NUM})+)(?: together)?"), None),
    (re.compile(rf"({_NUM}) ?(?:%|percent|per cent) of ({_NUM})"), lambda a, b: (f"{a}*{b}/100", (a, b))),
    (re.compile(rf"\b(?:a |one )?(half|third|quarter|fifth|tenth) of ({_NUM})"), None),
    (re.compile(rf"({_NUM}) (squared|cubed)"), None),
    (re.compile(rf"\bsquare root of ({_NUM})"), lambda a: (f"{a}**0.5", (a, "0.5"))),
)
_SCALE = {"double": "*2", "triple": "*3", "halve": "/2"}
_SAFE_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: operator.pow}


@dataclass(frozen=True, slots=True)
class Normalised:
    """One text as ``verify.py`` compares it."""

    tokens: tuple[str, ...]  # words; "#n" numbers; "=v" computed arithmetic; '"..."' quotes; "`...`" code
    tenses: frozenset[str]
    operands: frozenset[str]  # the numbers of the arithmetic, if any, with the ones a word implies ("double" 2)
    names: frozenset[str] = frozenset()  # words written capitalised inside a sentence (Samsung, Galaxy)
    brands: frozenset[str] = frozenset()  # words with a capital inside (AirPods, iPad, MacBook)
    definite: bool = False  # asks "what is the ...": a name or a value, not a description


def _evaluate(expr: str) -> float | None:
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _SAFE_OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _SAFE_OPS[type(node.op)](left, right)
        raise ValueError("not arithmetic")
    try:
        return ev(ast.parse(expr, mode="eval"))
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError):
        return None


def _value_token(value: float | None) -> str | None:
    return None if value is None else f"={round(value, 6):g}"


def _numbers_as_digits(text: str) -> str:
    """Number words, ordinals and roman numerals -> digits (case-sensitive for roman numerals)."""
    def roman(m: re.Match) -> str:
        s = m.group(1)
        if not s or (s == "I" and not _roman_context(text, m)):
            return s
        total = 0
        for i, ch in enumerate(s):
            v = _ROMAN_VALUES[ch]
            total += -v if i + 1 < len(s) and _ROMAN_VALUES[s[i + 1]] > v else v
        return str(total)
    text = _ROMAN.sub(roman, text).lower()
    text = re.sub(r"\b(twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)[- ](one|two|three|four|five|six|seven|"
                  r"eight|nine|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)\b",
                  lambda m: str(_TENS[m.group(1)] + (CARDINAL.get(m.group(2)) or ORDINAL[m.group(2)])), text)
    text = re.sub(r"\b(?:a |one )?(half|third|quarter|fifth|tenth) of\b", lambda m: f"{m.group(1)} of", text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", r"\1", text)
    text = re.sub(r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                  r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)\b"
                  r"(?![- ](?:one|two|three|four|five|six|seven|eight|nine)\b)",
                  lambda m: str(CARDINAL[m.group(0)]), text)
    return text


def _roman_context(text: str, m: re.Match) -> bool:
    """A lone "I" is a numeral only after a capitalised name ("Charles I", "World War I")."""
    before = text[:m.start()].rstrip()
    prev = re.search(r"([A-Za-z]+)$", before)
    return bool(prev and prev.group(1)[0].isupper() and before and not before.endswith((".", "?", "!")))


def _arithmetic(text: str) -> tuple[str, set[str]]:
    """Replace arithmetic phrases by their value token; return the text and the operands seen."""
    operands: set[str] = set()

    def put(expr: str, nums: tuple[str, ...]) -> str:
        tok = _value_token(_evaluate(expr))
        if tok is None:
            return expr
        operands.update(f"{float(n):g}" for n in nums)
        return f" {tok} "

    for pattern, build in _PHRASES:
        def sub(m: re.Match, build=build) -> str:
            g = m.groups()
            if build is not None:
                expr, nums = build(*g)
            elif g[0] in ("sum", "product"):
                nums = (g[1], *re.findall(_NUM, g[2]))
                expr = ("+" if g[0] == "sum" else "*").join(nums)
            elif g[0] in FRACTIONS:
                nums = (g[1], str(FRACTIONS[g[0]]))
                expr = f"{g[1]}/{FRACTIONS[g[0]]}"
            elif g[1] in ("squared", "cubed"):
                nums = (g[0], "2" if g[1] == "squared" else "3")
                expr = f"{g[0]}**{2 if g[1] == 'squared' else 3}"
            else:
                nums = (g[0], *re.findall(_NUM, g[1]))
                expr = "+".join(nums)
            return put(expr, nums)
        text = pattern.sub(sub, text)

    def chain(m: re.Match) -> str:
        nums = [m.group(1)]
        expr = m.group(1)
        for op, num in _CHAIN_PART.findall(m.group(2)):
            expr += _OPS[op] + num
            nums.append(num)
        return put(expr, tuple(nums))
    return _CHAIN.sub(chain, text), operands


def normalise(text: str) -> Normalised:
    """The token sequence, tenses and arithmetic operands of a question (or a whole conversation)."""
    atoms: list[str] = []
    original = text

    def keep(kind: str, body: str) -> str:
        atoms.append(kind + " ".join(body.split()) + kind)
        return f" ⟦{len(atoms) - 1}⟧ "
    text = _FENCE.sub(lambda m: keep("`", m.group(1)), text.replace("’", "'"))
    text = _INLINE.sub(lambda m: keep("`", m.group(1)), text)
    text = _QUOTED.sub(lambda m: keep('"', next(g for g in m.groups() if g).lower()), text)
    text = _numbers_as_digits(re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text))  # 1,200 -> 1200
    text = _CHAT_RE.sub(lambda m: _CHAT[m.group(1)], text)
    text = _TELL_ME_THE.sub("what is the", text)  # "tell me the capital of X" asks "what is the capital of X"
    text = _FILLER.sub(" ", text)
    text = _HOW_TO.sub(" how to ", text)
    for pattern, repl in _FRAMES + _CONSTRUCTIONS:
        text = pattern.sub(repl, text)
    # "what is the capital of Italy" asks for a name, "describe the capital of Italy" for a description:
    # a definite question is marked, and never passes for "explain / describe" (the verifier's frames)
    definite = bool(_WHAT_IS_THE.search(text))
    text, operands = _arithmetic(text)
    text = re.sub(r"%|\bper cent\b", " percent ", text)
    tokens: list[str] = []
    tenses: set[str] = set()
    for raw in re.findall(r"⟦\d+⟧|=[-\d.e+]+|" + _TOKEN.pattern, text):
        if raw.startswith("⟦"):
            tokens.append(atoms[int(raw[1:-1])])
            continue
        if raw.startswith("=") and len(raw) > 1:
            tokens.append(raw)
            continue
        for word in _expand(raw):
            if word in TENSE:
                tenses.add(TENSE[word])
            elif word in DROP or word in "%^*/+×÷=<>-":
                continue
            elif word in CARDINAL:
                tokens.append(f"#{CARDINAL[word]}")
            elif word in ORDINAL:
                tokens.append(f"#{ORDINAL[word]}")
            elif word[0].isdigit():
                tokens.append("#" + _number(word))
            else:
                tokens.append(_singular(word))
    if operands:  # a pure arithmetic question: its framing words say nothing
        framed = [t for t in tokens if t not in _ARITH_FRAME]
        if all(t.startswith("=") for t in framed):
            tokens = framed
    return Normalised(tuple(tokens), frozenset(tenses), frozenset(operands), *_names(original), definite=definite)


_NAME = re.compile(r"(?<![.?!:\n]\s)(?<!^)(?<![\w'])([A-Z][A-Za-z]*|[a-z]+[A-Z][A-Za-z]*)(?![a-z])(\d?)")


def _names(text: str) -> tuple[frozenset[str], frozenset[str]]:
    names, brands = set(), set()
    for m in _NAME.finditer(text.replace("’", "'")):
        word = m.group(1)
        names.add(word.lower())
        if any(c.isupper() for c in word[1:]) or m.group(2):
            brands.add(word.lower())
    return frozenset(names), frozenset(brands)


def _singular(word: str) -> str:
    """cats -> cat, works -> work, values -> value (not: glass, status, this, news)."""
    if len(word) >= 4 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ous", "ws")):
        return word[:-1]
    return word


def _number(tok: str) -> str:
    tok = re.sub(r"(st|nd|rd|th)$", "", tok)
    if re.fullmatch(r"\d{1,3}(,\d{3})+", tok):
        tok = tok.replace(",", "")
    return tok.lstrip("0") or "0" if "." not in tok else tok


def _expand(word: str) -> list[str]:
    head, _, tail = word.partition("'")
    if not tail:
        return [word]
    if tail == "t" and head.endswith("n"):  # don't, can't
        return [CONTRACTED_NOT.get(head, head[:-1]), "not"]
    if tail == "s":
        return [head, "is"] if head in ("what", "who", "where", "when", "how", "it", "that", "there", "here",
                                        "he", "she", "why", "which") else [head]
    return [head, CONTRACTIONS.get(tail, tail)]
