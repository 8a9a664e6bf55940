"""Train the byte-level BPE tokenizer of the `demo` preset and write it into sphinx-pipeline's
assets (`sphinx_mllm/pipeline/assets/demo_tokenizer.json`).

Byte-level: any text encodes (unseen words fall back to bytes) and decodes back exactly, so the
demo model trains on any LLaVA-format data. Digits are split one by one, as LLaMA's tokenizer
does, so every coordinate is a few digit tokens. The corpus is the synthetic multi-task data of
sphinx-data (seed 0) and the chat templates' fixed text, so the common words of the demo tasks are
single tokens. The 101 two-decimal numbers of box text are added as whole tokens (coordinate
tokens). Run: `.venv/bin/python scripts/train_demo_tokenizer.py`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from sphinx_mllm.data.cli import synth
from sphinx_mllm.data.templates import BUILTIN_TEMPLATES
from sphinx_mllm.pipeline.tokenizers import (
    COORDINATE_TOKENS,
    DEMO_SPECIAL_TOKENS,
    DEMO_TOKENIZER_FILE,
)

VOCAB_SIZE = 1024


def corpus(directory: Path) -> list[str]:
    synth(directory, seed=0, train=400, val=0)
    lines = []
    for path in sorted((directory / "tasks" / "train").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            lines.extend(turn["value"] for turn in json.loads(line)["conversations"])
    for template in BUILTIN_TEMPLATES.values():
        lines.extend(
            text
            for text in (template.system_prompt, template.user_template, template.assistant_prefix)
            if text
        )
    return lines


def main() -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(DEMO_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.train_from_iterator(corpus(Path(directory)), trainer)
    # Coordinate tokens: each two-decimal number of SPHINX's box text ("0.00" ... "1.00") is
    # one token, matched before the BPE, so a box coordinate is one choice among 101 bins
    # rather than four digit tokens; the text is unchanged and decodes back exactly.
    tokenizer.add_tokens([AddedToken(text, normalized=False) for text in COORDINATE_TOKENS])
    DEMO_TOKENIZER_FILE.write_text(tokenizer.to_str(pretty=False))
    print(f"{DEMO_TOKENIZER_FILE}: {tokenizer.get_vocab_size()} tokens")


if __name__ == "__main__":
    main()
