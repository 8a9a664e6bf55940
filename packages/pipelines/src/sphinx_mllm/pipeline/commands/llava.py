"""`sphinx-pipeline import-llava`: a Hugging Face LLaVA checkpoint as a sphinx-pipeline
checkpoint (config.json, model.safetensors, processor and tokenizer), with a table of what was
imported; `sphinx-pipeline export-llava`: the other way, for models LLaVA can express."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sphinx_mllm.pipeline.commands import add_command
from sphinx_mllm.pipeline.commands.outputs import (
    DTYPE_CHOICES,
    check_dtype,
    check_output_early,
    echo_rows,
)

if TYPE_CHECKING:
    from sphinx_mllm.pipeline.model import SphinxModel


def import_llava(
    hf_dir: Annotated[
        Path,
        typer.Argument(
            help="A LlavaForConditionalGeneration directory: config.json and *.safetensors."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The checkpoint directory to write.")],
    dtype: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(DTYPE_CHOICES)}; default: the checkpoint's."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace OUT if it is an earlier sphinx-pipeline checkpoint (never other files, "
            "never a directory holding HF_DIR)."
        ),
    ] = False,
) -> None:
    """Import a Hugging Face LLaVA checkpoint and save it as a sphinx-pipeline checkpoint.

    Example: sphinx-pipeline import-llava ./llava-1.5-7b-hf ./llava-1.5-7b --dtype float16
    """
    check_dtype(dtype)
    from sphinx_mllm.pipeline.checkpoint import WRITER
    from sphinx_mllm.pipeline.llava_import import from_llava

    check_output_early(out, force=force, writer=WRITER, inputs=[hf_dir])
    model = from_llava(hf_dir, dtype=dtype)
    written = model.save_pretrained(out, overwrite=force, inputs=[hf_dir])
    typer.echo(f"Imported {hf_dir} -> {written}")
    echo_rows(import_summary(model))


def import_summary(model: SphinxModel) -> list[tuple[str, str]]:
    """(component, description) rows of a model imported from LLaVA (one `hf_vision` encoder)."""
    from sphinx_mllm.pipeline.llava_import import ENCODER

    config = model.model_config
    spec = config.vision.encoders[0]
    encoder = model.visual.encoders[ENCODER]
    tower = encoder.model.config
    text = model.llm.config
    return [
        (
            "vision tower",
            f"{type(encoder.model).__name__}, {tower.image_size} px, patch {tower.patch_size}, "
            f"width {tower.hidden_size}, {tower.num_hidden_layers} layers",
        ),
        ("feature layer", str(spec.options["feature_layer"])),
        ("CLS token", "kept (full)" if spec.options["keep_cls"] else "dropped (default)"),
        ("visual tokens", f"{model.num_visual_tokens()} per image"),
        (
            "projector",
            f"{config.vision.mixer_options['projector']}, {encoder.embed_dim} -> "
            f"{model.visual.out_dim}",
        ),
        (
            "LLM",
            f"{type(model.llm).__name__} ({config.llm.name}), width {text.hidden_size}, "
            f"{text.num_hidden_layers} layers, vocabulary {text.vocab_size}",
        ),
        ("image token id", str(model.image_token_id)),
        ("tokenizer", "imported" if model.tokenizer is not None else "none in the checkpoint"),
        ("dtype", config.dtype),
        ("parameters", _parameter_counts(model)),
    ]


def _parameter_counts(model: SphinxModel) -> str:
    def count(module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    parts = {
        "vision tower": count(model.visual.encoders),
        "projector": count(model.visual.mixer),
        "LLM": count(model.llm),
    }
    listed = ", ".join(f"{label} {value:,}" for label, value in parts.items())
    return f"{count(model):,} ({listed})"


def export_llava(
    checkpoint: Annotated[Path, typer.Argument(help="A sphinx-pipeline checkpoint directory.")],
    out: Annotated[Path, typer.Argument(help="The LLaVA directory to write.")],
    force: Annotated[
        bool,
        typer.Option(
            help="Replace OUT if an earlier export-llava wrote it (never other files, never a "
            "directory holding CKPT)."
        ),
    ] = False,
) -> None:
    """Write a checkpoint as a Hugging Face LlavaForConditionalGeneration directory.

    Example: sphinx-pipeline export-llava ./my-llava ./my-llava-hf
    """
    from sphinx_mllm.pipeline.llava_export import WRITER, to_llava
    from sphinx_mllm.pipeline.model import SphinxModel

    check_output_early(out, force=force, writer=WRITER, inputs=[checkpoint])
    model = SphinxModel.from_pretrained(checkpoint)
    written = to_llava(model, out, overwrite=force, inputs=[checkpoint])
    typer.echo(
        f"Exported {checkpoint} -> {written} (LlavaForConditionalGeneration, "
        f"{model.num_visual_tokens()} visual tokens per image, image token id "
        f"{model.image_token_id})"
    )


def convert_checkpoint(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint directory, of format 1 (config.yaml) or 2.")
    ],
    out: Annotated[Path, typer.Argument(help="The checkpoint directory to write (format 2).")],
    force: Annotated[
        bool,
        typer.Option(help="Replace OUT if it is an earlier sphinx-pipeline checkpoint."),
    ] = False,
) -> None:
    """Rewrite a checkpoint in the current format (config.json, Hugging Face layout).

    Example: sphinx-pipeline convert-checkpoint runs/old/model runs/old/model-v2
    """
    from sphinx_mllm.pipeline.checkpoint import WRITER, describe_checkpoint
    from sphinx_mllm.pipeline.model import SphinxModel

    check_output_early(out, force=force, writer=WRITER, inputs=[checkpoint])
    version = describe_checkpoint(checkpoint).format_version
    model = SphinxModel.from_pretrained(checkpoint)
    written = model.save_pretrained(out, overwrite=force, inputs=[checkpoint])
    typer.echo(f"Converted {checkpoint} (format {version}) -> {written} (format 2)")


def register(app: typer.Typer) -> None:
    add_command(app, import_llava, "import-llava")
    add_command(app, export_llava, "export-llava")
    add_command(app, convert_checkpoint, "convert-checkpoint")
