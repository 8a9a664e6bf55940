"""Import a LLaMA2-Accessory SPHINX release: `import_accessory(src, out)` writes an ordinary
sphinx-pipeline checkpoint, streaming tensor by tensor; `from_accessory(src)` returns the model.

```python
from sphinx_mllm.pipeline import SphinxModel

model = SphinxModel.from_accessory("SPHINX-1k", dtype="bfloat16")  # the model, in memory
import_accessory("SPHINX-1k", "sphinx-1k")  # or a checkpoint on disk, whatever its size
```

`import_accessory` never builds the model: the model's names and shapes come from a copy on the
meta device, the release's shards are memory-mapped and each converted tensor is appended to
the output safetensors as it is made, so its memory stays a fraction of the release's size
(`benchmarks/accessory_import.py` measures it). The output is written into a hidden sibling
directory and renamed into place when complete.

The tokenizer is the release's SentencePiece model converted by transformers (which needs
`sentencepiece` and `protobuf`), and checked to encode a set of probe texts (the SPHINX prompt,
boxes, digits, accents, CJK, emoji, whitespace runs) to the same ids as SentencePiece itself.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sphinx_mllm.pipeline.accessory.architecture import accessory_model_config
from sphinx_mllm.pipeline.accessory.release import AccessoryImportError, AccessoryRelease
from sphinx_mllm.pipeline.accessory.weights import Move, plan_moves
from sphinx_mllm.pipeline.config import DTYPES, ModelConfig

PROBE_TEXTS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions.\n\n### Human: "
    "Please provide the bounding box coordinate of the region this sentence describes: "
    "the man on the left.\n### Assistant: [0.12,0.30,0.58,0.97]\n###",
    " leading space and  two  spaces, tabs\tand\nnew lines\n\n",
    "Numbers 0123456789, 3.14159 and 1,000,000; café naïve Ünïcödé; 漢字かな; 🙂👍",
    "<p>person</p> [0.10,0.20,0.30,0.40;0.55,0.21,0.70,0.90]",
)


def release_tokenizer(release: AccessoryRelease) -> Any:
    """The release's `tokenizer.model` as a transformers fast tokenizer, checked against
    SentencePiece on `PROBE_TEXTS` (ids without BOS: the chat template adds it)."""
    import sentencepiece
    from transformers import AutoTokenizer

    try:  # transformers parses the SentencePiece model with protobuf, and says little without it
        import google.protobuf  # noqa: F401
    except ImportError as error:
        raise AccessoryImportError(
            f"{release.tokenizer_file}: converting a SentencePiece tokenizer needs the protobuf "
            "package (pip install protobuf)"
        ) from error

    with tempfile.TemporaryDirectory() as scratch:  # the release's config.json is not HF's
        shutil.copy(release.tokenizer_file, Path(scratch) / "tokenizer.model")
        try:
            tokenizer = AutoTokenizer.from_pretrained(scratch)
        except (ImportError, ValueError, OSError) as error:
            raise AccessoryImportError(
                f"{release.tokenizer_file}: transformers cannot convert this SentencePiece "
                f"model (it needs the sentencepiece and protobuf packages): {error}"
            ) from error
    reference = sentencepiece.SentencePieceProcessor(model_file=str(release.tokenizer_file))
    for text in PROBE_TEXTS:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = reference.encode(text)
        if ours != theirs:
            raise AccessoryImportError(
                f"{release.tokenizer_file}: the converted tokenizer encodes {text[:40]!r}... as "
                f"{ours[:12]}..., SentencePiece as {theirs[:12]}...; refusing a tokenizer that "
                "differs from the one SPHINX was trained with"
            )
    if len(tokenizer) != reference.get_piece_size():
        raise AccessoryImportError(
            f"{release.tokenizer_file}: converted to {len(tokenizer)} tokens, SentencePiece "
            f"has {reference.get_piece_size()}"
        )
    return tokenizer


def _dtype_name(dtype: torch.dtype | str | None, release: AccessoryRelease) -> str:
    if dtype is None:
        stored = {info.dtype for info in release.tensors.values()}
        dtype = next(iter(stored)) if len(stored) == 1 else torch.float32
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise AccessoryImportError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def _prepare(
    source: str | Path,
    dtype: torch.dtype | str | None,
    half_precision_resize: bool,
    quick_gelu: bool,
    device: torch.device | str | None,
    reopen_bytes: int | None,
):
    """The release, the model built from its config (on `device`) and the planned moves."""
    from sphinx_mllm.pipeline.building import build_model

    options = {} if reopen_bytes is None else {"reopen_bytes": reopen_bytes}
    release = AccessoryRelease(source, **options)
    tokenizer = release_tokenizer(release)
    config = accessory_model_config(
        release,
        dtype=_dtype_name(dtype, release),
        half_precision_resize=half_precision_resize,
        quick_gelu=quick_gelu,
    )
    model = build_model(config, device=device, components={"tokenizer": tokenizer})
    moves = plan_moves(release, model.state_dict())
    return release, model, moves


def _heads(config: ModelConfig) -> dict[str, int]:
    settings = config.llm.config
    return {
        "q_heads": settings["num_attention_heads"],
        "kv_heads": settings["num_key_value_heads"],
    }


def from_accessory(
    source: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    half_precision_resize: bool = True,
    quick_gelu: bool = False,
) -> Any:
    """The `SphinxModel` of a LLaMA2-Accessory SPHINX release directory, in eval mode. `dtype`:
    float32, bfloat16 or float16 (default: the stored one, bfloat16 for the releases).
    `half_precision_resize` resizes views in float16 where the released code does (the 1k
    global view, the ConvNeXt input); `quick_gelu` runs CLIP with QuickGELU, the activation
    OpenAI trained it with, instead of the GELU the released code builds."""
    release, model, moves = _prepare(
        source, dtype, half_precision_resize, quick_gelu, device, reopen_bytes=None
    )
    heads = _heads(model.model_config)
    state = model.state_dict()
    with torch.no_grad():
        for move in moves:
            target = state[move.target]
            row = 0
            for part in move.parts(release, heads):
                rows = part.shape[0] if part.ndim else 1
                target.view(-1, *target.shape[1:])[row : row + rows].copy_(
                    part.reshape(-1, *target.shape[1:])
                )
                row += rows
    release.close()
    return model.eval()


def import_accessory(
    source: str | Path,
    output: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
    half_precision_resize: bool = True,
    quick_gelu: bool = False,
    shard_bytes: int | None = None,
    reopen_bytes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the release `source` as a sphinx-pipeline checkpoint at `output`, streaming (see
    the module docstring); `progress(done_bytes, total_bytes)` is called after each tensor.
    An existing `output` is refused unless `overwrite`, and even then unless it is an earlier
    sphinx-pipeline checkpoint that does not hold `source`."""
    from sphinx_mllm.core.outputs import AtomicOutputDirectory
    from sphinx_mllm.llm.merging.writer import (
        OutputTensor,
        StreamingShardWriter,
        plan_shards,
        shard_names,
        write_index,
    )
    from sphinx_mllm.pipeline.checkpoint import (
        CONFIG_FILE,
        DEFAULT_SHARD_BYTES,
        WRITER,
        config_to_save,
    )
    from sphinx_mllm.pipeline.hf_config import SphinxConfig

    release, model, moves = _prepare(
        source, dtype, half_precision_resize, quick_gelu, "meta", reopen_bytes
    )
    out_dtype = getattr(torch, model.model_config.dtype)
    planned = [OutputTensor(move.target, out_dtype, move.shape) for move in moves]
    shards = plan_shards(planned, shard_bytes or DEFAULT_SHARD_BYTES)
    names = ["model.safetensors"] if len(shards) == 1 else shard_names(len(shards))
    by_target = {move.target: move for move in moves}
    heads = _heads(model.model_config)
    total = sum(tensor.nbytes for tensor in planned)
    done = 0
    model_config = config_to_save(model)
    output_directory = AtomicOutputDirectory(
        output, writer=WRITER, force=overwrite, inputs=[release.directory]
    )
    try:
        config = SphinxConfig.of(model_config, model.image_token_id, architectures=["SphinxModel"])
        config.to_json_file(output_directory.path / CONFIG_FILE)
        metadata = {"format": "pt", "sphinx_model": model_config.name}
        for shard, file_name in zip(shards, names, strict=True):
            writer = StreamingShardWriter(output_directory.path / file_name, shard, metadata)
            for tensor in shard:
                move: Move = by_target[tensor.name]
                parts = (part.to(out_dtype) for part in move.parts(release, heads))
                writer.write(tensor.name, parts)
                done += tensor.nbytes
                if progress is not None:
                    progress(done, total)
        if len(shards) > 1:
            write_index(output_directory.path, shards, names)
        model.processor.save_pretrained(output_directory.path)
        release.close()
        return output_directory.commit()
    except BaseException:
        output_directory.abort()
        raise
