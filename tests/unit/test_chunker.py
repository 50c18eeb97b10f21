"""TextChunker: short first clause, whole sentences after, split-independent streaming."""

import random

import pytest

from duplex.text import TextChunker

PARAGRAPH = (
    "Well, I think so. Mr. J. R. R. Tolkien wrote 1,000,000 words at 10:30 a.m. today! "
    "Really?! Yes!? Hmm... Sure. Wait... what? Visit example.com/a.b or mail a.b@c.org now. "
    'He said "hi." Then it cost $3.14, more or less. (It works.) Dr. Smith, e.g. the U.S. one, '
    "came. No. 5 won. No. I disagree. So did I. The end"
)
PARAGRAPH_UNITS = [
    "Well, I think so.",
    "Mr. J. R. R. Tolkien wrote 1,000,000 words at 10:30 a.m. today!",
    "Really?!",
    "Yes!?",
    "Hmm...",
    "Sure.",
    "Wait... what?",
    "Visit example.com/a.b or mail a.b@c.org now.",
    'He said "hi."',
    "Then it cost $3.14, more or less.",
    "(It works.)",
    "Dr. Smith, e.g. the U.S. one, came.",
    "No. 5 won.",
    "No.",
    "I disagree.",
    "So did I.",
    "The end",
]
TRICKY = [
    PARAGRAPH,
    "Hi 🎉! Great news 👍🏽, we won. 🎉🎉. I ❤️ you… Truly\n\n* Item one\n* Item two",
    "こんにちは、今日はいい天気ですね。「はい。」明日も晴れるでしょう！",
    'No.\u20025 is it... no... Yes... ("Ok.") Fine, 3.14. ' * 7,
    "Wow" + "!" * 40 + " Next..." + " " * 30 + "Ok" + "." * 20 + " " + "a, " * 30,
]


def chunk(pieces: list[str], *, first_min_words: int = 2, max_chars: int = 300) -> list[str]:
    chunker = TextChunker(first_min_words=first_min_words, max_chars=max_chars)
    units = [unit for piece in pieces for unit in chunker.push(piece)]
    return units + chunker.flush()


def random_pieces(text: str, rng: random.Random, longest: int = 12) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, longest)
        pieces.append(text[i : i + n])
        i += n
    return pieces


def test_first_unit_is_a_short_clause_then_whole_sentences() -> None:
    chunker = TextChunker()
    assert chunker.push("Hello there, how are you? I am fine, thanks") == [
        "Hello there,",
        "how are you?",
    ]
    assert chunker.flush() == ["I am fine, thanks"]


@pytest.mark.parametrize(
    ("text", "first_min_words", "first"),
    [
        ("Well, I think so. Next one.", 2, "Well, I think so."),
        ("Well, I think so. Next one.", 1, "Well,"),
        ("Right now — today, I mean. Next.", 2, "Right now —"),
        ("One two; three. Next.", 2, "One two;"),
        ("Note this: it works. Next.", 2, "Note this:"),
        ("A sentence without a clause. Next.", 2, "A sentence without a clause."),
        ('"Hello there," she said. Next.', 2, '"Hello there,"'),
    ],
)
def test_first_clause_rule(text: str, first_min_words: int, first: str) -> None:
    assert chunk([text], first_min_words=first_min_words)[0] == first


def test_clauses_after_the_first_unit_stay_in_their_sentence() -> None:
    assert chunk(["Hi there, friend. Yes, later, ok. Fine"]) == [
        "Hi there,",
        "friend.",
        "Yes, later, ok.",
        "Fine",
    ]


def test_a_boundary_waits_for_the_next_character() -> None:
    chunker = TextChunker()
    assert chunker.push("It costs 3.") == []
    assert chunker.push("14 dollars. Next") == ["It costs 3.14 dollars."]
    assert chunker.push(" one, two.") == []
    assert chunker.push(" ") == ["Next one, two."]
    assert chunker.flush() == []


def test_paragraph_units() -> None:
    assert chunk([PARAGRAPH]) == PARAGRAPH_UNITS


@pytest.mark.parametrize(
    "sentence",
    [
        "Pi is about 3.14159 today.",
        "We have 1,000,000 users now.",
        "Meet me at 10:30 tomorrow.",
        "Version 1.2.3 shipped.",
        "Mr. Smith and Mrs. Jones met Ms. Lee.",
        "DR. WHO met prof. X in St. Louis.",
        "Bob Jr. and Bob Sr. argued vs. Carl.",
        "Bring pens and paper etc. to class.",
        "Use e.g. tea or i.e. a drink.",
        "The U.S. team left at 5 p.m. sharp.",
        "It opens at 9 a.m. daily.",
        "Acme Inc. and Foo Ltd. merged.",
        "He ranked No. 1 overall.",
        "J. R. R. Tolkien wrote it.",
        "J.R.R. Tolkien wrote it.",
        "Wait... what happened?",
        "Well… maybe not.",
        "See https://example.com/a.b?c=d.e now.",
        "Mail john.doe@mail.example.org today.",
    ],
)
def test_no_cut_inside_numbers_abbreviations_initials_ellipses_and_urls(sentence: str) -> None:
    assert chunk([sentence + " Next one."]) == [sentence, "Next one."]


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("Really?! Yes!? Ok!!! Done", ["Really?!", "Yes!?", "Ok!!!", "Done"]),
        ('He said "hi." Then he left.', ['He said "hi."', "Then he left."]),
        ("Go (now.) Then come back.", ["Go (now.)", "Then come back."]),
        ("She asked “why?” Nobody knew.", ["She asked “why?”", "Nobody knew."]),
        ("**Bold move.** Next one.", ["**Bold move.**", "Next one."]),
        ("Hmm... Sure. Fine", ["Hmm...", "Sure.", "Fine"]),
        ('Hmm... "Sure," he said.', ["Hmm...", '"Sure," he said.']),
        ("So did I. Then we left.", ["So did I.", "Then we left."]),
        ("No. I disagree.", ["No.", "I disagree."]),
        ("Title line\nBody text here", ["Title line", "Body text here"]),
        ("A heading\n\nThen text", ["A heading", "Then text"]),
        ("1. First item\n2. Second item", ["1. First item", "2. Second item"]),
    ],
)
def test_sentence_ends(text: str, units: list[str]) -> None:
    assert chunk([text]) == units


def test_cjk_marks_need_no_following_space() -> None:
    assert chunk(["こんにちは、今日はいい天気ですね。「はい。」明日も晴れ！"]) == [
        "こんにちは、",
        "今日はいい天気ですね。",
        "「はい。」",
        "明日も晴れ！",
    ]


@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("max_chars", [300, 40, 7])
def test_units_do_not_depend_on_how_the_text_was_split(text: str, max_chars: int) -> None:
    whole = chunk([text], max_chars=max_chars)
    assert whole
    assert chunk(list(text), max_chars=max_chars) == whole
    rng = random.Random(f"{text}{max_chars}")
    for _ in range(5):
        assert chunk(random_pieces(text, rng), max_chars=max_chars) == whole
    assert all(len(unit) <= max_chars for unit in whole)


@pytest.mark.parametrize("seed", range(3))
def test_streamed_units_rebuild_the_text(seed: int) -> None:
    pieces = random_pieces(PARAGRAPH, random.Random(seed))
    assert " ".join(chunk(pieces)) == " ".join(PARAGRAPH.split())
    assert " ".join(chunk(list(PARAGRAPH))) == " ".join(PARAGRAPH.split())


def test_emoji_and_symbols_are_dropped() -> None:
    assert chunk(["🎉👍🏽 ✨❤️ 👨‍👩‍👧 🇯🇵"]) == []
    assert chunk(["🎉🎉. ", "👍!"]) == []
    assert chunk(["Great news 🎉! We won 👍. I ❤️ you 👨‍👩‍👧. It is 25°C ™"]) == [
        "Great news!",
        "We won.",
        "I you.",
        "It is 25°C",
    ]


def test_an_emoji_only_sentence_does_not_take_the_short_first_unit() -> None:
    assert chunk(["🎉🎉! Hello there, friend. Bye"]) == ["Hello there,", "friend.", "Bye"]


def test_whitespace_and_empty_pushes() -> None:
    chunker = TextChunker()
    assert chunker.push("") == []
    assert chunker.push("   ") == []
    assert chunker.push("\n\n\t") == []
    assert chunker.flush() == []
    assert chunk(["Hello", " ", "big\t\t", "\n", "world"]) == ["Hello big", "world"]
    assert chunk(["  spaced    out   words  "]) == ["spaced out words"]


def test_lone_surrogates_are_dropped() -> None:
    assert chunk(["Bad \ud800 text\udfff here."]) == ["Bad text here."]
    assert chunk(["\ud83d", "\ude00", " ok"]) == ["ok"]
    assert chunk(["\ud800"]) == []


def test_a_megabyte_without_punctuation_streams_out_in_bounded_units() -> None:
    text = "word " * 200_000
    chunker = TextChunker(max_chars=300)
    units = chunker.push(text)
    assert len(units) == 3333, "long text must stream out before the utterance ends"
    units += chunker.flush()
    assert len(units) == 3334
    assert all(unit == " ".join(["word"] * 60) for unit in units[:-1])
    assert units[-1] == " ".join(["word"] * 20)
    assert chunk([text[i : i + 4096] for i in range(0, len(text), 4096)]) == units


def test_a_megabyte_without_spaces_is_hard_cut() -> None:
    units = chunk(["x" * 1_000_000])
    assert [len(unit) for unit in units] == [300] * 3333 + [100]


def test_flush_cuts_the_rest_at_max_chars() -> None:
    chunker = TextChunker(max_chars=20)
    assert chunker.push("aaaa bbbb cccc dddd eeee") == ["aaaa bbbb cccc dddd"]
    assert chunker.flush() == ["eeee"]


def test_flush_resets_for_a_short_first_unit_again() -> None:
    chunker = TextChunker()
    assert chunker.push("First one, then more. ") == ["First one,", "then more."]
    assert chunker.push("A tail, unfinished") == []
    assert chunker.flush() == ["A tail, unfinished"]
    assert chunker.flush() == []
    assert chunker.push("Again a clause, and the rest. ") == ["Again a clause,", "and the rest."]


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        TextChunker(max_chars=0)
    with pytest.raises(ValueError):
        TextChunker(first_min_words=-1)
