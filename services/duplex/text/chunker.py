"""Cuts streamed text (LLM tokens, fragments, one huge chunk) into speakable units.

The first unit of an utterance is a short clause so the first audio comes early; later units
are whole sentences, which synthesise with better prosody. A boundary is confirmed only once
the character after it has arrived, because "3." may continue as "3.14"; the units therefore
never depend on how the text was split into pushes.
"""

import enum
import re
import unicodedata

_SENTENCE_ENDS = ".!?…"
_CLAUSE_ENDS = ",;:—–"
# Full-width marks are unambiguous and are not followed by spaces in Chinese or Japanese.
_CJK_SENTENCE_ENDS = "。！？"
_CJK_CLAUSE_ENDS = "、，；："
_LINE_BREAKS = "\n\u2028\u2029"
# Closing quotes, brackets and markdown emphasis belong to the sentence they close.
_CLOSERS = frozenset("\"'”’»›)]}*」』）】〕》〉")
_OPENERS = frozenset("\"'“‘«‹([{*「『（【〔《〈")

_SENTENCE_SET = frozenset(_SENTENCE_ENDS + _CJK_SENTENCE_ENDS)
_CLAUSE_SET = frozenset(_CLAUSE_ENDS + _CJK_CLAUSE_ENDS)
_CJK_SET = frozenset(_CJK_SENTENCE_ENDS + _CJK_CLAUSE_ENDS)
_LINE_BREAK_SET = frozenset(_LINE_BREAKS)
_SENTENCE_MARKS = _SENTENCE_ENDS + _CJK_SENTENCE_ENDS + _LINE_BREAKS
_SENTENCE_MARK = re.compile(f"[{re.escape(_SENTENCE_MARKS)}]")
_ANY_MARK = re.compile(f"[{re.escape(_SENTENCE_MARKS + _CLAUSE_ENDS + _CJK_CLAUSE_ENDS)}]")

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp mt ft approx dept est gen gov lt col"
    " sgt capt rev hon".split()
)
# "No. 5" is an abbreviation, but "No. I disagree." is a whole answer.
_NUMBER_ABBREVIATIONS = frozenset(
    "no nos vol fig p pp jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]", re.IGNORECASE)  # e.g, i.e, U.S, a.m, J.R.R
_MAX_ABBREVIATION = 12
# Marks, closers and spaces looked at past a mark: a cap keeps a boundary that waits on
# more text cheap to re-judge on every push ("!!!!..." one character at a time).
_LOOKAHEAD = 16

_DROP_CATEGORIES = frozenset({"So", "Sk", "Cs", "Co", "Cn", "Cf", "Me"})
_KEEP_SYMBOLS = frozenset("°")  # "25°C" loses its meaning without it; voices read it
_LETTER = re.compile(r"[^\W\d_]")
_ALNUM = re.compile(r"[^\W_]")
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_MARK = re.compile(f"\\s+(?=[{re.escape(_SENTENCE_ENDS + ',;:')}])")
_LEADING_JUNK = _SENTENCE_ENDS + _CLAUSE_ENDS + _CJK_SENTENCE_ENDS + _CJK_CLAUSE_ENDS + " "
_BREAKABLE_SPACES = " \t\u3000"


class _Verdict(enum.Enum):
    CUT = enum.auto()  # a boundary: the unit ends at the returned index
    SKIP = enum.auto()  # not a boundary: scanning resumes at the returned index
    WAIT = enum.auto()  # undecidable until more text arrives


def _keep(ch: str) -> bool:
    if ch in _KEEP_SYMBOLS:
        return True
    category = unicodedata.category(ch)
    if category == "Cc":
        return ch.isspace()
    variation_selector = "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef"
    return category not in _DROP_CATEGORIES and not variation_selector


# Nearly all text is ASCII, so most units skip the per-character category lookup.
_ASCII_DROP = re.compile(f"[{re.escape(''.join(c for c in map(chr, range(128)) if not _keep(c)))}]")


def _clean(text: str) -> str:
    """Drop what a voice cannot say (emoji, symbols, lone surrogates) and collapse spaces."""
    kept = _ASCII_DROP.sub("", text) if text.isascii() else "".join(filter(_keep, text))
    kept = _SPACE_BEFORE_MARK.sub("", _SPACES.sub(" ", kept))
    # A dropped emoji can leave its punctuation at the start of the next unit.
    return kept.lstrip(_LEADING_JUNK).rstrip()


def _skip(buf: str, i: int, chars: frozenset[str], stop: int) -> int:
    while i < stop and buf[i] in chars:
        i += 1
    return i


def _peek(buf: str, j: int, limit: int) -> str | None:
    """The first visible character from `j` on, a line break counting as visible.

    "" when it lies past `limit` or the lookahead; None when it has not arrived yet.
    """
    cap = min(limit + 1, j + _LOOKAHEAD)
    stop = min(len(buf), cap)
    while j < stop and buf[j].isspace() and buf[j] not in _LINE_BREAK_SET:
        j += 1
    j = _skip(buf, j, _OPENERS, stop)
    if j < stop:
        return buf[j]
    return "" if stop == cap else None


def _token_before(buf: str, i: int, start: int) -> str:
    j = i
    floor = max(start, i - _MAX_ABBREVIATION)
    while j > floor and (buf[j - 1].isalnum() or buf[j - 1] == "."):
        j -= 1
    if j > start and (buf[j - 1].isalnum() or buf[j - 1] == "."):
        return ""  # longer than any abbreviation
    return buf[j:i]


def _count_words(text: str) -> int:
    # Japanese and Chinese have no spaces: each character counts as a word.
    return sum(
        max(len(_CJK_CHAR.findall(token)), 1) for token in text.split() if _ALNUM.search(token)
    )


class TextChunker:
    """Cuts one utterance at a time into units: `push` the text as it comes, then `flush`."""

    def __init__(self, *, first_min_words: int = 2, max_chars: int = 300) -> None:
        if max_chars < 1 or first_min_words < 0:
            raise ValueError("max_chars must be positive and first_min_words not negative")
        self._first_min_words = first_min_words
        self._max_chars = max_chars
        self._buf = ""
        self._start = 0  # where the pending unit begins in _buf
        self._pos = 0  # marks before this index are already ruled out
        self._letter_free = 0  # the unit has no letter before this index; -1: it has one
        self._first = True

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the units it completes, in order."""
        if not text:
            return []
        self._buf += text
        units: list[str] = []
        while (cut := self._next_cut()) is not None:
            units += self._emit(self._buf[self._start : cut])
            self._start = self._pos = self._letter_free = cut
        # Compact once per push, not per cut, so one huge push stays linear.
        self._buf = self._buf[self._start :]
        self._pos -= self._start
        if self._letter_free >= 0:
            self._letter_free -= self._start
        self._start = 0
        return units

    def flush(self) -> list[str]:
        """End the utterance: return what remains and start afresh with a short first unit."""
        units = self.push("\n")  # the end of an utterance confirms boundaries like a line break
        self._buf, self._start, self._pos, self._letter_free, self._first = "", 0, 0, 0, True
        return units

    def _next_cut(self) -> int | None:
        buf, limit = self._buf, self._start + self._max_chars
        marks = _ANY_MARK if self._first else _SENTENCE_MARK
        while (match := marks.search(buf, self._pos, min(len(buf), limit))) is not None:
            verdict, index = self._judge(match.start(), limit)
            if verdict is _Verdict.CUT:
                return index
            if verdict is _Verdict.WAIT:
                self._pos = match.start()
                return None
            self._pos = index
        if len(buf) > limit:
            return self._force_cut(limit)
        self._pos = max(self._pos, len(buf))
        return None

    def _judge(self, i: int, limit: int) -> tuple[_Verdict, int]:
        """Decide whether the mark at `buf[i]` ends the pending unit."""
        buf = self._buf
        if buf[i] in _LINE_BREAK_SET:
            return _Verdict.CUT, i + 1
        run = _SENTENCE_SET if buf[i] in _SENTENCE_SET else _CLAUSE_SET
        cap = min(limit + 1, i + _LOOKAHEAD)
        stop = min(len(buf), cap)
        k = _skip(buf, i, run, stop)  # "?!" and "..." are one mark, the last decides
        j = _skip(buf, k, _CLOSERS, stop)
        if j == cap:
            return _Verdict.SKIP, j
        if j == len(buf):
            return _Verdict.WAIT, i
        if buf[k - 1] not in _CJK_SET and not buf[j].isspace():
            return _Verdict.SKIP, j  # 3.14, 1,000, 10:30, example.com
        if run is _CLAUSE_SET:
            ends: bool | None = _count_words(buf[self._start : k]) >= self._first_min_words
        else:
            ends = self._ends_sentence(i, k, j, limit)
        if ends is None:
            return _Verdict.WAIT, i
        # A bare number ("1." of a list) or an emoji is not worth a unit of its own.
        if ends and self._has_letter(k):
            return _Verdict.CUT, j
        return _Verdict.SKIP, j

    def _ends_sentence(self, i: int, k: int, j: int, limit: int) -> bool | None:
        buf = self._buf
        marks = buf[i:k]
        if marks == ".":
            token = _token_before(buf, i, self._start)
            lower = token.lower()
            initial = len(token) == 1 and token.isupper() and token != "I"
            if lower in _ABBREVIATIONS or initial or _DOTTED.fullmatch(token):
                return False
            if lower in _NUMBER_ABBREVIATIONS:
                following = _peek(buf, j, limit)
                return None if following is None else not following.isdigit()
            return True
        if not marks.strip(".…"):
            # An ellipsis is often a pause inside a sentence: "Wait... what?"
            following = _peek(buf, j, limit)
            if following is None:
                return None
            return following.isupper() or following in _LINE_BREAK_SET
        return True

    def _has_letter(self, end: int) -> bool:
        """Whether the pending unit has a letter before `end`, remembered to stay linear."""
        if self._letter_free < 0:
            return True
        if _LETTER.search(self._buf, self._letter_free, end):
            self._letter_free = -1
            return True
        self._letter_free = max(self._letter_free, end)
        return False

    def _force_cut(self, limit: int) -> int:
        buf, start = self._buf, self._start
        space = max(buf.rfind(c, start + 1, limit + 1) for c in _BREAKABLE_SPACES)
        return space + 1 if space > start else limit

    def _emit(self, raw: str) -> list[str]:
        unit = _clean(raw)
        if not _ALNUM.search(unit):
            return []
        self._first = False
        return [unit]
