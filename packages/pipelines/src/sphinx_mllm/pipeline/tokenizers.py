"""The tokenizer of a model and its image-token id.

`source: llm` takes the language model's own tokenizer (none for a random-initialised preset),
`source: demo` the byte-level BPE shipped with sphinx-pipeline (747 tokens: any text encodes and
decodes back exactly; each two-decimal box coordinate is one token; made by
`scripts/train_demo_tokenizer.py`), anything else is a tokenizer
directory or hub id for `AutoTokenizer`.

The image-token id only marks positions: they are embedded as visual tokens, never through the
LLM's embedding table, so it may lie outside the LLM's vocabulary (the default when there is no
tokenizer: `vocab_size`, the first id past the table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx_mllm.pipeline.config import TokenizerConfig

DEMO_TOKENIZER_FILE = Path(__file__).parent / "assets" / "demo_tokenizer.json"
DEMO_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")
COORDINATE_TOKENS = tuple(f"{index / 100:.2f}" for index in range(101))  # "0.00" ... "1.00"


def demo_tokenizer() -> Any:
    """The `demo` preset's byte-level BPE as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    if not DEMO_TOKENIZER_FILE.is_file():
        raise FileNotFoundError(
            f"The demo tokenizer is missing from the installation ({DEMO_TOKENIZER_FILE}); "
            "reinstall sphinx-pipeline or run scripts/train_demo_tokenizer.py"
        )
    return PreTrainedTokenizerFast(
        tokenizer_file=str(DEMO_TOKENIZER_FILE),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<image>"],
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(config: TokenizerConfig, llm_tokenizer: Any) -> Any:
    """The tokenizer `config` names, with the image token added when it lacks it."""
    if config.source == "llm":
        tokenizer = llm_tokenizer
    elif config.source == "demo":
        tokenizer = demo_tokenizer()
    else:
        from transformers import AutoTokenizer

        source = Path(config.source).expanduser()
        if not source.is_dir() and (source.exists() or config.source.startswith((".", "/", "~"))):
            raise FileNotFoundError(f"No tokenizer directory at {source}")
        tokenizer = AutoTokenizer.from_pretrained(config.source)
    if tokenizer is None:
        return None
    if config.image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [config.image_token]})
    if config.pad_token is not None:
        tokenizer.pad_token = config.pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def resolve_image_token_id(config: TokenizerConfig, tokenizer: Any, vocab_size: int) -> int:
    """The explicit id of the config, else the tokenizer's id of the image token, else the first
    id past the LLM's embedding table."""
    if config.image_token_id is not None:
        return config.image_token_id
    if tokenizer is not None:
        return int(tokenizer.convert_tokens_to_ids(config.image_token))
    return vocab_size
