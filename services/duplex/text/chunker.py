"""Cuts streaming text (LLM tokens, fragments, one huge chunk) into speakable units.

The first unit of an utterance is a short clause so the first audio comes early; later units
are whole sentences, which synthesise with better prosody. A boundary is confirmed only when
the character after the punctuation has arrived, because "3." may continue as "3.14".
"""

from __future__ import annotations

import re
import unicodedata

_SENTENCE_END = frozenset(".!?…。！？")
_CLAUSE_END = frozenset(",;:—–、，；：")
# Closing quotes and brackets stay with the sentence they end.
_CLOSERS = frozenset("\"'”’»)]}")
_ABBREVIATIONS = frozenset(
    (
        "mr mrs ms dr prof st jr sr vs etc e.g i.e u.s a.m p.m no inc ltd co mt ft approx"
        " dept est fig vol jan feb mar apr jun jul aug sep sept oct nov dec"
    ).split()
)
_DROP_CATEGORIES = frozenset({"So", "Sk", "Cs", "Co", "Cn", "Cf"})
_WORD_BEFORE = re.compile(r"([\w.]+)$")
_SPACES = re.compile(r"\s+")


class _Wait:
    """The boundary depends on text that has not arrived yet."""


_WAIT = _Wait()


def clean(text: str) -> str:
    """Drop what a voice cannot say (emoji, symbols, lone surrogates) and collapse spaces."""
    kept = "".join(
        ch for ch in text if unicodedata.category(ch) not in _DROP_CATEGORIES or ch in "\n\t"
    )
    return _SPACES.sub(" ", kept).strip()


def speakable(unit: str) -> bool:
    return any(ch.isalnum() for ch in unit)


class TextChunker:
    def __init__(self, *, first_min_words: int = 2, max_chars: int = 300) -> None:
        if max_chars < 20:
            raise ValueError("max_chars must be at least 20")
        self._first_min_words = first_min_words
        self._max_chars = max_chars
        self._buf = ""
        self._scan = 0  # boundaries before this index were already ruled out
        self._first = True

    def push(self, text: str) -> list[str]:
        if not text:
            return []
        self._buf += text
        units: list[str] = []
        while (cut := self._next_cut()) is not None:
            units += self._emit(self._buf[:cut])
            self._buf = self._buf[cut:]
            self._scan = 0
        return units

    def flush(self) -> list[str]:
        rest, self._buf, self._scan = self._buf, "", 0
        units = self._emit(rest)
        while units and len(units[-1]) > self._max_chars:
            last = units.pop()
            units += self._split_long(last)
        self._first = True
        return units

    # -- boundaries --------------------------------------------------------------------------

    def _next_cut(self) -> int | None:
        """Index just past the next confirmed boundary in the buffer, or None."""
        buf = self._buf
        # The last character cannot be judged yet: its successor decides.
        for i in range(self._scan, len(buf) - 1):
            ch = buf[i]
            if ch == "\n" and buf[i + 1] == "\n":
                return i + 2
            if ch in _SENTENCE_END:
                cut = self._sentence_cut(buf, i)
                if isinstance(cut, _Wait):
                    self._scan = i
                    return self._force_cut(buf) if len(buf) > self._max_chars else None
                if cut is not None:
                    return cut
            elif ch in _CLAUSE_END and self._first and self._ends_clause(buf, i):
                return i + 1
            if i >= self._max_chars:
                return self._force_cut(buf)
        self._scan = max(0, len(buf) - 1)
        return self._force_cut(buf) if len(buf) > self._max_chars else None

    def _sentence_cut(self, buf: str, i: int) -> int | _Wait | None:
        """Where a sentence ending at `buf[i]` is cut; None if it is not an end; or wait."""
        j = i + 1
        if buf[j] in _SENTENCE_END:
            return None  # "?!" or "...": the last mark of the run decides
        while j < len(buf) and buf[j] in _CLOSERS:
            j += 1
        if j >= len(buf):
            return _WAIT
        if not buf[j].isspace():
            return None  # 3.14, example.com, e.g.
        ellipsis = buf[i] == "…" or buf[max(0, i - 2) : i + 1] == "..."
        if buf[i] == "." and not ellipsis:
            word = _WORD_BEFORE.search(buf[: i + 1])
            token = word.group(1).rstrip(".").lower() if word else ""
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
                return None  # Dr. Smith, J. R. R. Tolkien
        if ellipsis:  # a trailing-off pause ends a sentence only before a capital letter
            rest = buf[j:].lstrip()
            if not rest:
                return _WAIT
            return j if rest[0].isupper() else None
        return j

    def _ends_clause(self, buf: str, i: int) -> bool:
        if not buf[i + 1].isspace():
            return False  # 1,000 and 10:30
        return len(buf[: i + 1].split()) >= self._first_min_words

    def _force_cut(self, buf: str) -> int:
        limit = self._max_chars
        space = buf.rfind(" ", 0, limit)
        return space + 1 if space > 0 else limit

    # -- units -----------------------------------------------------------------------------

    def _emit(self, raw: str) -> list[str]:
        unit = clean(raw)
        if not speakable(unit):
            return []
        self._first = False
        return [unit]

    def _split_long(self, unit: str) -> list[str]:
        out = []
        while len(unit) > self._max_chars:
            space = unit.rfind(" ", 0, self._max_chars)
            cut = space if space > 0 else self._max_chars
            out.append(unit[:cut].strip())
            unit = unit[cut:].strip()
        return [*out, unit] if unit else out
