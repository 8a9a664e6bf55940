"""One `sphinx-pipeline train` session: resolve the run, build the model and data, train, save
the final model, score the held-out data and leave the figures in the run directory.

    RUN/run.yaml            the resolved run (model, data, train settings)
    RUN/grounding.jsonl     grounded pretraining of the visual stack, when the run has it
    RUN/metrics.jsonl       one line per step
    RUN/eval_curve.jsonl    held-out scores every `train.eval_every` steps (learning curves)
    RUN/checkpoints/        resumable checkpoints (the last k)
    RUN/model/              the trained model (SphinxModel.from_pretrained)
    RUN/eval.json           per-task scores and every prediction
    RUN/training_curve.png  loss, learning rate and held-out scores
    RUN/eval_boxes.png      held-out REC images, reference (green) and predicted (red) boxes
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from sphinx_mllm.core.outputs import check_replaceable, read_marker, write_marker
from sphinx_mllm.pipeline.checkpoint import WRITER as CHECKPOINT_WRITER
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from sphinx_mllm.pipeline.training.distributed import Distributed
from sphinx_mllm.pipeline.training.plots import box_gallery, curve_table, plot_training_curve
from sphinx_mllm.pipeline.training.run import (
    RunConfig,
    demo_run_config,
    generate_synthetic,
    grounding_config,
    synthetic_sources,
)
from sphinx_mllm.pipeline.training.state import list_checkpoints
from sphinx_mllm.pipeline.training.streaming import StreamedData
from sphinx_mllm.pipeline.training.tracking import TENSORBOARD_DIR, WANDB_ID_FILE, RunTracking
from sphinx_mllm.pipeline.training.trainer import (
    EVAL_CURVE_FILE,
    METRICS_FILE,
    NonFiniteLossError,
    Trainer,
)

GALLERY_SIZE = 12


RUN_WRITER = "sphinx-pipeline train"  # the marker of a run directory (sphinx_mllm.core.outputs)


class TrainingError(ValueError):
    """A run that cannot start as asked, or that stopped on a non-finite loss, with what to do
    about it."""


def pair_sources(specs: list[str], roots: list[Path]) -> list[DataSource]:
    """`--data` files with their `--images` roots: one root per file, or one for all."""
    if roots and len(roots) not in (1, len(specs)):
        raise ValueError(
            f"{len(specs)} --data file(s) and {len(roots)} --images root(s): give one root, or "
            "one per file"
        )
    return [
        DataSource.parse(spec, roots[0] if len(roots) == 1 else roots[i] if roots else None)
        for i, spec in enumerate(specs)
    ]


def load_model(checkpoint: str, device: str | None = None, announce=None) -> Any:
    """A checkpoint directory, or a preset built with random weights (`announce(line)` is told
    so)."""
    from sphinx_mllm.pipeline.building import build_model
    from sphinx_mllm.pipeline.model import SphinxModel
    from sphinx_mllm.pipeline.registry import list_model_presets

    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return SphinxModel.from_pretrained(path, device=device)
    presets = list_model_presets()
    if checkpoint not in presets:
        what = "is a file, not a checkpoint directory" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"{path} {what}, and {checkpoint!r} is no model preset ({', '.join(presets)})"
        )
    if announce is not None:
        announce(f"{checkpoint!r} is a model preset: building it with random weights")
    return build_model(checkpoint, device=device)


def resolve_run(
    config_file: Path | None,
    preset: str | None,
    data: list[str],
    images: list[Path],
    eval_data: list[str],
    max_steps: int | None,
    settings: list[str],
    report: Callable[[str], None] | None = None,
) -> RunConfig:
    """The run the command line describes (see `sphinx-pipeline train --help`); `report` is
    given a line for what --max-steps shortened besides the steps."""
    if config_file is not None:
        run = RunConfig.from_yaml_file(config_file)
    else:
        run = demo_run_config()
        if data:  # the demo's settings on the user's own data, which has no boxes to ground
            run.synthetic = None
            run.train.max_minutes = 0.0
            run.grounding = None
            run.train.stage = "full"  # so its randomly initialised encoders train
    if preset is not None:
        run.model = preset
    if data:
        run.data = pair_sources(data, images)
        run.synthetic = None
    if eval_data:
        run.eval = pair_sources(eval_data, images[:1] if len(images) == 1 else [])
    if max_steps is not None:
        run, shortened = run.shortened(max_steps)
        if shortened and report is not None:
            report(shortened)
    if settings:
        run = run.with_settings(settings)
    if not run.data and run.synthetic is None:
        raise TrainingError("The training config names no data (data: [...] or --data FILE)")
    return run


def run_training(
    *,
    config_file: Path | None,
    preset: str | None,
    data: list[str],
    images: list[Path],
    eval_data: list[str],
    out: Path,
    max_steps: int | None,
    settings: list[str],
    resume: bool,
    device: str | None,
    progress: bool,
    restart: bool = False,
) -> dict[str, Any]:
    """Carry out a whole training session; returns the evaluation summary (empty without
    held-out data)."""
    from sphinx_mllm.pipeline.building import build_model, resolve_config
    from sphinx_mllm.pipeline.model import SphinxModel

    notes: list[str] = []
    run = resolve_run(
        config_file, preset, data, images, eval_data, max_steps, settings, report=notes.append
    )
    check_run_directory(out, resume=resume, restart=restart)
    dist = Distributed.from_environment(device)
    say = _printer(dist.is_main)
    for note in notes:
        say(note)
    if restart and dist.is_main:
        _clear_run(out)
    dist.barrier()
    if run.synthetic is not None:
        if dist.is_main:
            generate_synthetic(out, run.synthetic)
        dist.barrier()
        train_sources, held_out = synthetic_sources(out, run.task_weights)
        run.data, run.eval = train_sources, run.eval or held_out
    grounding = grounding_config(run, out)
    torch.manual_seed(run.train.seed)
    if isinstance(run.model, str) and Path(run.model).expanduser().is_dir():
        # a checkpoint (an imported release, an earlier run's model): fine-tune its weights
        model = SphinxModel.from_pretrained(Path(run.model).expanduser(), device=dist.device)
        config = model.model_config
    else:
        config = resolve_config(run.model)
        model = build_model(config, device=dist.device)
    # every record and image is read before anything is written into the run directory
    if run.data_loading == "streamed":  # indexed now, rendered and decoded while training
        training_data = StreamedData.build(
            model.processor,
            run.data,
            max_length=run.train.max_length,
            on_error=run.on_error,
            num_workers=run.data_workers,
        )
    else:
        training_data = TrainingData.build(
            model.processor, run.data, max_length=run.train.max_length, on_error=run.on_error
        )
    if run.eval:
        from sphinx_mllm.pipeline.evaluation import records_to_score

        records_to_score(run.eval, limit=None)
    run_record = run.to_dict() | {"model": config.to_dict()}
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, RUN_WRITER)
        (out / "run.yaml").write_text(yaml.safe_dump(run_record, sort_keys=False))
    started = time.perf_counter()
    if grounding is not None and not (resume and list_checkpoints(out)):
        # every process grounds alike (same seed, same batches), so their weights agree
        from sphinx_mllm.pipeline.training.grounding import pretrain_visual_grounding

        grounded = pretrain_visual_grounding(
            model,
            grounding,
            seed=run.train.seed,
            log_file=out / "grounding.jsonl" if dist.is_main else None,
            progress=progress and dist.is_main,
        )
        say(grounded.summary())
    say(training_data.report.summary())
    say(
        f"model: {config.name}, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{model.num_visual_tokens()} visual tokens per image; stage {run.train.stage}; "
        f"{dist.world_size} process(es) on {dist.device}"
        + (f" ({run.train.strategy})" if dist.enabled else "")
    )
    tracking = RunTracking(run.trackers, out, run_record) if dist.is_main else None
    evaluate = _curve_evaluator(model, run) if run.eval else None
    trainer = Trainer(
        model,
        training_data,
        run.train,
        out,
        resume=resume,
        distributed=dist,
        progress=progress,
        on_step=None if tracking is None else tracking.log_step,
        evaluate=evaluate if tracking is None or evaluate is None else tracking.scored(evaluate),
    )
    try:
        result = trainer.train()
        trained = trainer.trained_model()  # gathered from the processes' shards with fsdp
    except BaseException as error:
        dist.close(synchronise=False)  # another process may never reach a barrier
        if isinstance(error, NonFiniteLossError):
            raise TrainingError(str(error)) from error
        raise
    finally:
        if tracking is not None:
            tracking.close()
    del trainer, model  # a sharded model is replaced by its gathered copy
    dist.close()
    minutes = (time.perf_counter() - started) / 60
    say(
        f"trained {result.steps} steps in {minutes:.1f} min (stopped by {result.stopped_by}); "
        f"final loss {result.final_loss:.4f}"
    )
    if trained is None:  # not the main process
        return {}
    model = trained.to(dist.device)
    final = _export(model, out)
    say(f"model: saved to {final}")
    summary: dict[str, Any] = {}
    if run.eval:
        summary = _evaluate(model, run, out, say)
    curve_file = out / EVAL_CURVE_FILE
    if curve_file.is_file():
        say(f"held-out score by step:\n{curve_table(curve_file)}")
    curve = plot_training_curve(
        out / METRICS_FILE,
        out / "training_curve.png",
        summary or None,
        curve_file if curve_file.is_file() else None,
    )
    say(f"figures: {curve}")
    return summary


FIGURES = ("training_curve.png", "eval_boxes.png")
RUN_OUTPUTS = (
    "checkpoints",
    "model",
    METRICS_FILE,
    EVAL_CURVE_FILE,
    "grounding.jsonl",
    "eval.json",
    "run.yaml",
    TENSORBOARD_DIR,
    "wandb",
    WANDB_ID_FILE,
    *FIGURES,
)


def check_run_directory(out: Path, *, resume: bool, restart: bool) -> None:
    """Refuse what would lose an earlier run or someone else's files: a second run into a
    directory that holds one (without --resume or --restart), --resume without a checkpoint,
    --restart of a directory that no training run wrote."""
    if resume and restart:
        raise TrainingError("--resume continues a run and --restart starts it over: pick one")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file; a run directory is a directory")
    if resume:
        if not list_checkpoints(out):
            raise TrainingError(
                f"--resume: {out} holds no checkpoint to resume from (checkpoints/step-*); drop "
                "--resume to start a new run there"
            )
        if (out / "model").exists():  # the run's final export will replace it
            check_replaceable((out / "model").resolve(), CHECKPOINT_WRITER)
        return
    earlier = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not earlier:
        return
    if not restart:
        raise TrainingError(
            f"--out {out} holds an earlier run ({', '.join(earlier)}): pass --resume to continue "
            "it, --restart to start it over, or choose another --out"
        )
    if not _is_training_run(out):
        raise TrainingError(
            f"--restart: {out} holds {', '.join(earlier)} but no sphinx-pipeline training run "
            "wrote it; refusing to remove them (choose another --out)"
        )


def _is_training_run(out: Path) -> bool:
    """Whether a training run wrote `out`: its marker, or (runs of earlier versions) a
    `run.yaml` with a run's sections."""
    if (read_marker(out) or {}).get("writer") == RUN_WRITER:
        return True
    try:
        record = yaml.safe_load((out / "run.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(record, dict) and {"model", "data", "train"} <= set(record)


def _clear_run(out: Path) -> None:
    """Remove what a run wrote (the synthetic data it generated stays: it is only a cache);
    `check_run_directory` has made sure that a training run wrote it."""
    import shutil

    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _export(model: Any, out: Path) -> Path:
    """The trained model as a plain checkpoint (LoRA adapters merged into the LLM)."""
    llm = model.llm
    if hasattr(llm, "merge_and_unload"):
        model.llm = llm.merge_and_unload()
    return model.save_pretrained(out / "model", overwrite=True)


def _curve_evaluator(model: Any, run: RunConfig):
    """Scores for the learning curve: the first `curve_limit` held-out records of each source."""
    from sphinx_mllm.pipeline.evaluation import evaluate

    def scores() -> dict[str, dict[str, Any]]:
        return evaluate(model, run.eval, limit=run.curve_limit).by_task()

    return scores


def _evaluate(model: Any, run: RunConfig, out: Path, say) -> dict[str, Any]:
    from sphinx_mllm.pipeline.evaluation import evaluate

    started = time.perf_counter()
    model.eval()
    report = evaluate(model, run.eval, limit=run.eval_limit)
    say(f"held-out evaluation ({time.perf_counter() - started:.0f} s):\n{report.table()}")
    (out / "eval.json").write_text(json.dumps(report.to_dict(), indent=1))
    boxes = [p for p in report.predictions if p.metric == "rec" and len(p.images) == 1]
    if boxes:
        gallery = box_gallery(boxes[:GALLERY_SIZE], out / "eval_boxes.png")
        say(f"figures: {gallery}")
    return report.by_task()


def _printer(enabled: bool):
    def say(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return say
