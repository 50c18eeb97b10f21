from __future__ import annotations

import random

import pytest

from duplex.text import TextChunker

PARAGRAPH = (
    "Well, I think so. Mr. J. R. R. Tolkien wrote 1,000 pages at 10:30 a.m. today! "
    'Really?! Yes... Sure. Visit example.com now. He said "hi." Then it cost $3.14, '
    "more or less. Done"
)


def chunk_all(pieces: list[str], **kwargs: int) -> list[str]:
    c = TextChunker(**kwargs)
    units = [u for p in pieces for u in c.push(p)]
    return units + c.flush()


def test_first_unit_is_a_short_clause_then_sentences() -> None:
    c = TextChunker()
    assert c.push("Hello there, how are you? I am fine") == ["Hello there,", "how are you?"]
    assert c.flush() == ["I am fine"]


def test_boundaries_wait_for_the_next_character() -> None:
    c = TextChunker()
    assert c.push("It costs 3.") == []
    assert c.push("14 dollars. Next") == ["It costs 3.14 dollars."]


def test_numbers_abbreviations_initials_urls_and_quotes() -> None:
    assert chunk_all([PARAGRAPH]) == [
        "Well, I think so.",
        "Mr. J. R. R. Tolkien wrote 1,000 pages at 10:30 a.m. today!",
        "Really?!",
        "Yes...",
        "Sure.",
        "Visit example.com now.",
        'He said "hi."',
        "Then it cost $3.14, more or less.",
        "Done",
    ]


@pytest.mark.parametrize("seed", range(5))
def test_any_split_of_the_input_gives_the_same_units(seed: int) -> None:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(PARAGRAPH):
        n = rng.randint(1, 12)
        pieces.append(PARAGRAPH[i : i + n])
        i += n
    assert chunk_all(pieces) == chunk_all([PARAGRAPH])
    assert chunk_all(list(PARAGRAPH)) == chunk_all([PARAGRAPH])
    assert " ".join(chunk_all(pieces)) == " ".join(PARAGRAPH.split())


def test_emoji_and_symbols_are_dropped() -> None:
    assert chunk_all(["🎉👍 ✨"]) == []
    assert chunk_all(["Great news 🎉! We won 👍."]) == ["Great news !", "We won ."]


def test_whitespace_and_empty_chunks_are_no_ops() -> None:
    c = TextChunker()
    assert c.push("") == [] and c.push("   ") == [] and c.push("\n") == []
    assert c.flush() == []


def test_lone_surrogates_do_not_crash() -> None:
    assert chunk_all(["Bad \ud800 text here."]) == ["Bad text here."]


def test_megabyte_without_punctuation_streams_in_bounded_units() -> None:
    c = TextChunker(max_chars=300)
    first = c.push("word " * 1000)
    assert first, "long text must stream out before the end"
    units = first + c.push("word " * 200_000) + c.flush()
    assert all(0 < len(u) <= 300 for u in units)
    assert sum(u.count("word") for u in units) == 201_000


def test_flush_resets_for_a_short_first_unit_again() -> None:
    c = TextChunker()
    c.push("First one, then more. ")
    assert c.flush() == []
    assert c.push("Again a clause, and the rest. ") == ["Again a clause,", "and the rest."]


def test_paragraph_break_is_a_boundary() -> None:
    assert chunk_all(["A heading without a stop\n\nThen text"]) == [
        "A heading without a stop",
        "Then text",
    ]
