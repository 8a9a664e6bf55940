"""`sphinx-pipeline train`, `sphinx-pipeline consolidate` and `sphinx-pipeline eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sphinx_mllm.pipeline.commands import add_command

DEFAULT_RUN_DIR = Path("runs/demo")


def train(
    config: Annotated[
        Path | None, typer.Argument(help="A training config YAML (model, data, eval, train).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Model preset (sphinx-pipeline list presets).")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="LLaVA JSON/JSONL file, FILE or FILE:WEIGHT (repeatable)."),
    ] = None,
    images: Annotated[
        list[Path] | None,
        typer.Option(help="Image root of each --data in order (one root serves them all)."),
    ] = None,
    eval_data: Annotated[
        list[str] | None,
        typer.Option("--eval-data", help="Held-out LLaVA file(s) scored after training."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Run directory.")] = DEFAULT_RUN_DIR,
    max_steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Optimisation steps; fewer than the run plans shortens its other phases "
            "(warmup, synthetic data, grounding, held-out scoring) in proportion.",
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value: a train field (lr=1e-3) or model.* by dotted path."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in --out.")
    ] = False,
    restart: Annotated[
        bool,
        typer.Option(help="Start --out over: remove its checkpoints, metrics and results."),
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if any).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model. With no arguments: the embedded demo, a tiny SPHINX trained on the CPU on
    synthetic multi-task data, then scored on held-out data.

    Examples:

      sphinx-pipeline train                                      # the demo (about 15 minutes)

      sphinx-pipeline train --data my.jsonl --images imgs/ --out runs/mine --max-steps 500

      torchrun --nproc_per_node 2 -m sphinx_mllm.pipeline train run.yaml --out runs/ddp

      torchrun --nproc_per_node 8 -m sphinx_mllm.pipeline train run.yaml --set strategy=fsdp
    """
    from sphinx_mllm.pipeline.training.session import run_training

    run_training(
        config_file=config,
        preset=preset,
        data=data or [],
        images=images or [],
        eval_data=eval_data or [],
        out=out,
        max_steps=max_steps,
        settings=settings or [],
        resume=resume,
        restart=restart,
        device=device,
        progress=progress,
    )


def consolidate(
    checkpoint: Annotated[
        Path, typer.Argument(help="A sharded checkpoint of an fsdp run: RUN/checkpoints/step-N.")
    ],
    out: Annotated[Path, typer.Argument(help="The checkpoint directory to write.")],
    force: Annotated[
        bool,
        typer.Option(
            help="Replace OUT if it is an earlier sphinx-pipeline checkpoint (never other files, "
            "never a directory holding CHECKPOINT)."
        ),
    ] = False,
) -> None:
    """Turn a sharded checkpoint of an fsdp run into one ordinary checkpoint (config.json,
    safetensors, processor), in one process: SphinxModel.from_pretrained(OUT) loads it.

    Example: sphinx-pipeline consolidate runs/big/checkpoints/step-002000 runs/big/step-2000
    """
    from sphinx_mllm.pipeline.checkpoint import WRITER
    from sphinx_mllm.pipeline.commands.outputs import check_output_early
    from sphinx_mllm.pipeline.training.sharded_checkpoints import check_complete
    from sphinx_mllm.pipeline.training.sharded_checkpoints import consolidate as run

    check_complete(checkpoint)
    check_output_early(out, force=force, writer=WRITER, inputs=[checkpoint])
    written = run(checkpoint, out, force=force)
    typer.echo(f"Consolidated {checkpoint} -> {written}")


def evaluate(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint directory (or a preset name).")],
    data: Annotated[list[str], typer.Option("--data", help="LLaVA JSON/JSONL file (repeatable).")],
    images: Annotated[
        list[Path] | None, typer.Option(help="Image root of each --data (one serves all).")
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            help="auto (each task's own metric) or one for every record: exact, vqa, rec, "
            "detection_map, layout_map, phrase_f1, pck, cider."
        ),
    ] = "auto",
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many records per file.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Records generated at once.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Score a checkpoint on held-out records, per task, each with its own metric (auto: VQA
    accuracy, REC Acc@0.5, box mAP, phrase F1, PCK, CIDEr; exact match otherwise).

    Example: sphinx-pipeline eval runs/demo/model --data val.jsonl --images data/ --metric auto
    """
    from sphinx_mllm.pipeline.evaluation import METRICS
    from sphinx_mllm.pipeline.evaluation import evaluate as run_evaluation
    from sphinx_mllm.pipeline.training.session import load_model, pair_sources

    if metric not in METRICS:
        raise typer.BadParameter(
            f"expected one of {METRICS}, got {metric!r}", param_hint="--metric"
        )
    sources = pair_sources(data, images or [])
    model = load_model(checkpoint)
    report = run_evaluation(model, sources, metric=metric, batch_size=batch_size, limit=limit)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.table())


def register(app: typer.Typer) -> None:
    add_command(app, train)
    add_command(app, consolidate)
    add_command(app, evaluate, "eval")
