"""The answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA, `vqaEval.py`).

The official script's tables are facts; here they are written as data in our own form:

- Contractions: the official map sends an answer word missing apostrophes to the contracted form
  ("dont" -> "don't", "hadn'tve" -> "hadn't've"). Its keys are exactly the targets below with one
  apostrophe dropped (each way of dropping one), which is how the map is built here. Two official
  identity entries ("let's", "she's") change nothing and are left out; the official map also
  rewrites "somebody'd" to "somebodyd" (a reversed entry, kept for fidelity). The keys spelt with
  a capital I ("Im", "Ive", "Id've") can never match, because words are lower-cased first;
  they are kept because the official map has them.
- Number words: "none" and "zero" to "0", "one" to "1" ... "ten" to "10" (nothing above ten).
- Articles: "a", "an", "the" are dropped.
- Punctuation: each mark of `PUNCTUATION` is deleted when it touches a space in the original
  answer, or when the answer contains a digit-comma-digit group anywhere ("10,000" -> "10000");
  otherwise it becomes a space ("t-shirt" -> "t shirt"). A period not followed by a digit is
  deleted ("yes." -> "yes", "2.5" stays). Apostrophes and colons are kept.
"""

from __future__ import annotations

import re

# Each contracted form, apostrophes in place; the map keys are these with one apostrophe dropped.
_CONTRACTED_TEXT = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am
mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't
she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll
who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've
you'd you'd've you'll you're you've
"""


def _contraction_map() -> dict[str, str]:
    table = {}
    for target in _CONTRACTED_TEXT.split():
        for index, char in enumerate(target):
            if char == "'":
                table[target[:index] + target[index + 1 :]] = target
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS: dict[str, str] = _contraction_map()

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first part is a lookahead that always holds at
# a period, so it deletes every period not followed by a digit. It also passes re.UNICODE (32) as
# the `count` argument, so at most 32 periods go; kept for fidelity.
_PERIOD = re.compile(r"\.(?!\d)")
_OFFICIAL_PERIOD_COUNT = 32


def process_punctuation(text: str) -> str:
    """The official `processPunctuation` (case is left alone)."""
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space or digit_comma else " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lower-case, number words, articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """How the official evaluation normalises a predicted answer.

    Newlines and tabs become spaces, the ends are stripped, then `process_punctuation` and
    `process_digit_article` run: ``"Two dogs."`` -> ``"2 dogs"``, ``"10,000"`` -> ``"10000"``.
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))
