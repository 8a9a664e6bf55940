"""Read back what each reply of a rendered sample is trained to say: for checking a template or
a data set by eye, and for tests."""

from __future__ import annotations

from typing import Any

from sphinx_mllm.data.templates.rendering import IGNORE_INDEX, RenderedSample
from sphinx_mllm.data.templates.tokenization import as_text_tokenizer, decode


def label_texts(sample: RenderedSample, tokenizer: Any) -> list[str]:
    """The labelled text of each assistant turn: what the model is trained to say."""
    tok = as_text_tokenizer(tokenizer)
    in_image = {i for span in sample.image_spans for i in range(span.start, span.end)}
    first_text = next(
        (
            position
            for position, token_id in enumerate(sample.input_ids)
            if position not in in_image and not tok.is_special(token_id)
        ),
        len(sample),
    )
    texts = []
    for turn in sample.turns:
        if turn.role == "assistant":
            positions = [p for p in range(turn.start, turn.end) if sample.labels[p] != IGNORE_INDEX]
            ids = [sample.labels[p] for p in positions]
            texts.append(decode(tok, ids, sequence_start=bool(ids) and positions[0] <= first_text))
    return texts
