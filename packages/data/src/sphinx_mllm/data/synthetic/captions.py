"""Captions of shape scenes, counting each kind of object: "two red circles and a blue square"."""

from __future__ import annotations

from collections import Counter

from sphinx_mllm.data.synthetic.shapes import PLURALS, ShapeScene

NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}


def article(word: str) -> str:
    """ "a" or "an", whichever goes before `word`."""
    return "an" if word[0] in "aeiou" else "a"


def indefinite(phrase: str) -> str:
    """`phrase` with "a" or "an" in front."""
    return f"{article(phrase)} {phrase}"


def count_phrase(count: int, colour: str, shape: str) -> str:
    """ "a red circle", "an orange star", "three blue squares"."""
    if count == 1:
        return indefinite(f"{colour} {shape}")
    return f"{NUMBER_WORDS.get(count, str(count))} {colour} {PLURALS[shape]}"


def caption_scene(scene: ShapeScene) -> str:
    """Every kind of object with its count, in the order the kinds were drawn."""
    counts = Counter((item.colour, item.shape) for item in scene.objects)
    phrases = [count_phrase(n, colour, shape) for (colour, shape), n in counts.items()]
    if len(phrases) == 1:
        return phrases[0]
    return f"{', '.join(phrases[:-1])} and {phrases[-1]}"
