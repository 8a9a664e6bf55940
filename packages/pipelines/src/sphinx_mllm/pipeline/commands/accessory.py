"""`sphinx-pipeline import-accessory`: a LLaMA2-Accessory SPHINX release directory (SPHINX,
SPHINX-1k, SPHINX-v2-1k, SPHINX-Tiny, SPHINX-Tiny-1k) as a sphinx-pipeline checkpoint, converted
tensor by tensor without loading the release into memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sphinx_mllm.pipeline.commands import add_command
from sphinx_mllm.pipeline.commands.outputs import (
    DTYPE_CHOICES,
    check_dtype,
    check_output_early,
    echo_rows,
)


def import_accessory(
    src: Annotated[
        Path,
        typer.Argument(
            help="A release directory: consolidated.RR-of-WW.model.pth, config.json, meta.json, "
            "tokenizer.model."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The checkpoint directory to write.")],
    dtype: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(DTYPE_CHOICES)}; default: the release's (bfloat16)."),
    ] = None,
    half_precision_resize: Annotated[
        bool,
        typer.Option(
            help="Resize views in float16 where the released code does (the 1k global view, "
            "the ConvNeXt input), as SPHINX ran."
        ),
    ] = True,
    clip_quick_gelu: Annotated[
        bool,
        typer.Option(
            help="Run CLIP with QuickGELU (what OpenAI trained it with) instead of the GELU the "
            "released code builds."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace OUT if it is an earlier sphinx-pipeline checkpoint (never other files, "
            "never a directory holding SRC)."
        ),
    ] = False,
) -> None:
    """Import a LLaMA2-Accessory SPHINX release and save it as a sphinx-pipeline checkpoint.

    Example: sphinx-pipeline import-accessory ./SPHINX-1k ./sphinx-1k, then
    sphinx-pipeline chat ./sphinx-1k --image photo.jpg, or sphinx-pipeline serve ./sphinx-1k
    """
    check_dtype(dtype)
    from tqdm.auto import tqdm

    from sphinx_mllm.pipeline.accessory import import_accessory as convert
    from sphinx_mllm.pipeline.checkpoint import WRITER, describe_checkpoint

    check_output_early(out, force=force, writer=WRITER, inputs=[src])
    with tqdm(desc="convert", unit="B", unit_scale=True, leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        written = convert(
            src,
            out,
            dtype=dtype,
            overwrite=force,
            half_precision_resize=half_precision_resize,
            quick_gelu=clip_quick_gelu,
            progress=progress,
        )
    config = describe_checkpoint(written).model_config
    llm = config.llm.config
    typer.echo(f"Imported {src} -> {written}")
    rows = [
        ("encoders", ", ".join(spec.name for spec in config.vision.encoders)),
        ("views", f"{config.vision.splitter} {dict(config.vision.splitter_options)}"),
        (
            "LLM",
            f"Llama, width {llm['hidden_size']}, {llm['num_hidden_layers']} layers, "
            f"{llm['num_attention_heads']} heads ({llm['num_key_value_heads']} key-value), "
            f"vocabulary {llm['vocab_size']}",
        ),
        ("template", f"{config.template}, visual tokens {config.placement} (after BOS)"),
        ("dtype", config.dtype),
    ]
    echo_rows(rows)


def register(app: typer.Typer) -> None:
    add_command(app, import_accessory, "import-accessory")
