"""A training run as data: the model, the data, the trainer settings and the evaluation, read
from a YAML file and command-line options, and carried out into a run directory.

```yaml
model: demo                      # a preset, a config YAML path, or a whole ModelConfig mapping
data:
  - {path: train.jsonl, weight: 1.0, images: data/}   # images_outside_root: true lets its
eval:                                                 # image paths be absolute or use '..'

  - {path: val.jsonl, images: data/}
train: {stage: finetune, max_steps: 1000, lr: 2.0e-5, global_batch_size: 32, eval_every: 250}
curve_limit: 40                  # held-out records per source scored every eval_every steps
grounding:                       # optional: grounded pretraining of the visual stack first
  {instances: instances_train.json, images: data/train, steps: 300}
```

With no data at all, the run is the embedded demo: the synthetic multi-task data of sphinx-data
is generated into the run directory and split into train and held-out records; its encoders are
first pretrained on the synthetic objects' boxes (`grounding`), then frozen while the MLLM trains.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import time
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, StrictInt, with_config
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, TypedDict

from sphinx_mllm.pipeline.config import (
    CONFIG,
    ConfigError,
    ModelConfig,
    Number,
    PositiveInt,
    config_errors,
    set_path,
    validate,
)
from sphinx_mllm.pipeline.training.data import DataSource
from sphinx_mllm.pipeline.training.grounding import GroundingConfig
from sphinx_mllm.pipeline.training.tracking import Tracker
from sphinx_mllm.pipeline.training.trainer import TrainConfig

DEMO_TASK_WEIGHTS = {
    "vqa": 1.0,
    "rec": 1.0,
    "reg": 0.25,
    "grounded_caption": 0.25,
    "detection": 0.1,
    "pose": 0.1,
    "layout": 0.1,
    "short_caption": 0.25,
}
# multi_round: the training questions of an image in one conversation (LLaVA-1.5's treatment of
# VQAv2 and RefCOCO), so one visual forward pass teaches all of them
DEMO_SYNTHETIC = {"seed": 0, "train": 3000, "val": 50, "multi_round": 1}
# the demo's encoders start from random weights: grounded pretraining on the synthetic objects
# (about 40 s) teaches them shape as well as colour, which the MLLM's loss alone does not
DEMO_GROUNDING = {"steps": 300, "batch_size": 32, "lr": 1e-3}
GROUNDING_PATHS = ("instances", "images", "eval_instances", "eval_images")
OnError = Literal["raise", "skip"]
ON_ERROR: tuple[str, ...] = get_args(OnError)
_GROUNDING_FIELDS = [f.name for f in dataclasses.fields(GroundingConfig)]


def _model_spec(value: Any) -> Any:
    """A preset name or config file (kept as given), a `ModelConfig`, or a mapping that is a
    whole `ModelConfig` (checked, and kept as the mapping it is)."""
    if isinstance(value, str | ModelConfig):
        return value
    if isinstance(value, dict):
        ModelConfig.__pydantic_validator__.validate_python(value)  # its problems, under model.
        return value
    raise PydanticCustomError(
        "model_spec",
        "expected a preset name, a model config file or a model config mapping, got {got}",
        {"got": repr(value)[:60]},
    )


def _source_specs(value: Any) -> Any:
    """Data sources as plain data: a `FILE[:WEIGHT]` spec or a mapping of `DataSource` fields
    each; none at all is an empty list."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [DataSource.spec_fields(item) if isinstance(item, str) else item for item in value]
    return value


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


def _known_grounding_fields(value: Any) -> Any:
    """Some `GroundingConfig` fields, checked as that class checks them (the synthetic demo
    supplies the instances and images itself)."""
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "expected a mapping")
    unknown = sorted(set(value) - set(_GROUNDING_FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown grounding field(s) {unknown}{_hint(unknown, _GROUNDING_FIELDS)}; expected "
            f"some of {sorted(_GROUNDING_FIELDS)}"
        )
    placeholders = {"instances": ".", "images": "."}
    GroundingConfig.__pydantic_validator__.validate_python(placeholders | value)
    return dict(value)


def _known_tasks(value: Any) -> Any:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(DEMO_TASK_WEIGHTS))
        if unknown:
            raise ValueError(
                f"Unknown synthetic task(s) {unknown}{_hint(unknown, DEMO_TASK_WEIGHTS)}; "
                f"expected some of {sorted(DEMO_TASK_WEIGHTS)}"
            )
    return value


def _some_task_weighted(weights: dict[str, float]) -> dict[str, float]:
    if any(weight < 0 for weight in weights.values()) or not any(
        weight > 0 for weight in (DEMO_TASK_WEIGHTS | weights).values()
    ):
        raise ValueError(
            f"must be >= 0 (0 leaves a task out) with some task above 0, got {weights!r}"
        )
    return weights


def _hint(unknown: list[str], known) -> str:
    hints = sorted({m for key in unknown for m in difflib.get_close_matches(key, known, n=2)})
    return f" (did you mean {' or '.join(map(repr, hints))}?)" if hints else ""


@with_config(CONFIG)
class SyntheticSettings(TypedDict):
    """The demo's synthetic data (`sphinx_mllm.data.cli.synth`): its seed, the number of train
    and held-out images, and whether an image's training questions are one conversation."""

    seed: StrictInt
    train: PositiveInt
    val: PositiveInt
    multi_round: NotRequired[StrictInt]


ModelSpec = Annotated[str | ModelConfig | dict[str, Any], PlainValidator(_model_spec)]
Sources = Annotated[list[DataSource], BeforeValidator(_source_specs)]
TaskWeights = Annotated[
    dict[str, Number], BeforeValidator(_known_tasks), AfterValidator(_some_task_weighted)
]
GroundingSettings = Annotated[dict[str, Any], BeforeValidator(_known_grounding_fields)]


@config_errors
@dataclass(config=CONFIG)
class RunConfig:
    """Everything a training run needs, typed and checked when made or read: a `ConfigError`
    names every problem by its field path (`train.max_steps: expected an integer, got 'ten'`)."""

    # a preset, a config YAML path or a whole ModelConfig (mapping), built as it says; or a
    # checkpoint directory, whose weights the run fine-tunes (e.g. an imported SPHINX release)
    model: ModelSpec = "demo"
    data: Sources = field(default_factory=list)
    eval: Sources = field(default_factory=list)
    train: Annotated[TrainConfig, BeforeValidator(_none_is_empty)] = field(
        default_factory=TrainConfig
    )
    eval_limit: PositiveInt | None = None
    curve_limit: PositiveInt | None = 40  # records per held-out source scored every eval_every
    synthetic: SyntheticSettings | None = None  # the demo's data (seed, train, val, multi_round)
    task_weights: TaskWeights | None = None  # the synthetic tasks' mixture (DEMO_TASK_WEIGHTS)
    # GroundingConfig fields; the synthetic demo supplies the instances and images itself
    grounding: GroundingSettings | None = None
    # a record that cannot be used (malformed, missing or unreadable image): stop at the first
    # ("raise") or drop each and count it by reason in the data summary ("skip")
    on_error: OnError = "raise"
    # "memory": every record rendered and checked before training (TrainingData); "streamed":
    # records indexed, then read, rendered and decoded by `data_workers` DataLoader workers per
    # process while training (StreamedData), for data sets too large for memory
    data_loading: Literal["memory", "streamed"] = "memory"
    data_workers: Annotated[StrictInt, Field(ge=0)] = 2
    # where the main process logs steps and held-out scores besides metrics.jsonl
    trackers: list[Tracker] = field(default_factory=lambda: ["tensorboard"])

    @classmethod
    def from_yaml_file(cls, path: Path) -> RunConfig:
        """The run a YAML file describes; its relative paths are relative to the file's folder,
        and its problems are named with the file."""
        if not path.is_file():
            raise FileNotFoundError(f"No training config at {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a training config is a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data, base=path.parent)
        except ConfigError as error:
            raise error.within(str(path)) from error

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> RunConfig:
        """The run plain data describes, its relative data and grounding paths relative to
        `base`; every problem is named by its path in one `ConfigError`."""
        run = validate(cls, data)
        run.data = [_resolved(source, base) for source in run.data]
        run.eval = [_resolved(source, base) for source in run.eval]
        run.grounding = _grounding_paths(run.grounding, base)
        return run

    def to_dict(self) -> dict[str, Any]:
        model = self.model.to_dict() if isinstance(self.model, ModelConfig) else self.model
        return {
            "model": model,
            "data": [_source_dict(s) for s in self.data],
            "eval": [_source_dict(s) for s in self.eval],
            "train": dataclasses.asdict(self.train),
            "eval_limit": self.eval_limit,
            "curve_limit": self.curve_limit,
            "synthetic": self.synthetic,
            "on_error": self.on_error,
            "data_loading": self.data_loading,
            "data_workers": self.data_workers,
            "trackers": list(self.trackers),
        } | {  # absent rather than None, so that `--set grounding.steps=...` can create it
            key: dict(value)
            for key, value in (("task_weights", self.task_weights), ("grounding", self.grounding))
            if value is not None
        }

    def shortened(self, max_steps: int) -> tuple[RunConfig, str | None]:
        """The run cut to `max_steps`, every phase in proportion when that is fewer steps than
        the run has (`--max-steps 50` is a quick look of the whole run, not its first 50 steps):
        warmup, the synthetic data's size, grounding steps, learning-curve interval and the
        held-out records scored, each kept above a floor that still measures something. Also
        returns a line saying what was shortened (None when nothing was)."""
        data = self.to_dict()
        planned = data["train"]["max_steps"]
        data["train"]["max_steps"] = max_steps
        if max_steps >= planned:
            return RunConfig.from_dict(data), None

        def part(value: int, floor: int) -> int:
            return max(floor, round(value * max_steps / planned))

        train = data["train"]
        said = [f"--max-steps {max_steps} of {planned}: warmup"]
        train["warmup_steps"] = min(train["warmup_steps"], part(train["warmup_steps"], 1))
        if train["eval_every"]:
            train["eval_every"] = part(train["eval_every"], 1)
            said.append("curve interval")
        if data["synthetic"] is not None:
            synthetic = data["synthetic"]
            synthetic["train"] = min(synthetic["train"], part(synthetic["train"], 100))
            synthetic["val"] = min(synthetic["val"], part(synthetic["val"], 10))
            said.append(f"synthetic data ({synthetic['train']} training items of each kind)")
        if "grounding" in data:
            grounding = data["grounding"]
            steps = grounding.get("steps", GroundingConfig.steps)
            grounding["steps"] = min(steps, part(steps, 10))
            said.append(f"grounding ({grounding['steps']} steps)")
        for key, floor in (("eval_limit", 20), ("curve_limit", 10)):
            if data[key] is not None:
                data[key] = min(data[key], part(data[key], floor))
        if data["eval_limit"] is not None:
            said.append(f"held-out scoring ({data['eval_limit']} records per source)")
        return RunConfig.from_dict(data), ", ".join(said) + " shortened in proportion"

    def with_settings(self, settings: list[str]) -> RunConfig:
        """Apply `key=value` settings (`lr=1e-3`, `train.max_steps=50`, `eval_limit=20`,
        `model.llm.overrides.num_hidden_layers=2`); values are read as YAML scalars, and a key
        without a dot is a train field unless it is a top-level one."""
        data = self.to_dict()
        for setting in settings:
            key, sep, raw = setting.partition("=")
            if not sep or not key:
                raise ValueError(f"--set {setting!r}: expected key=value")
            value = _scalar(raw)
            if "." not in key and key not in data:
                key = f"train.{key}"
            if key.startswith("model.") and isinstance(data["model"], str):
                from sphinx_mllm.pipeline.building import resolve_config

                data["model"] = resolve_config(data["model"]).to_dict()
            set_path(data, key, value)
        return RunConfig.from_dict(data)


def demo_run_config() -> RunConfig:
    """The embedded demo: the `demo` preset on sphinx-data's synthetic tasks."""
    return RunConfig(
        model="demo",
        train=TrainConfig(
            stage="finetune",  # the encoders, grounded first, stay frozen
            # 16 conversations a step: twice the steps of 32 in the same time; on 2 cores that
            # lifted held-out REC from 0.04-0.05 to 0.09 (VQA 0.59-0.61 before, 0.53-0.67 after)
            max_steps=2600,
            global_batch_size=16,
            lr=1.5e-3,
            min_lr=1e-4,
            warmup_steps=30,
            weight_decay=0.0,
            clip_grad_norm=1.0,
            max_length=512,
            checkpoint_every=200,
            keep_last=2,
            max_minutes=11.0,
            eval_every=500,  # learning curves: 80 held-out records per task, ~10 s each time
        ),
        eval_limit=200,
        curve_limit=80,
        synthetic=dict(DEMO_SYNTHETIC),
        grounding=dict(DEMO_GROUNDING),
    )


def generate_synthetic(run_dir: Path, settings: dict[str, int]) -> None:
    """Generate the synthetic dataset into the run directory, unless it is there already with
    these settings."""
    from sphinx_mllm.data.cli import synth

    root = run_dir / "data"
    manifest = root / "tasks" / "manifest.json"
    unknown = sorted(set(settings) - {"seed", "train", "val", "multi_round"})
    if unknown:
        raise ValueError(
            f"Unknown synthetic setting(s) {unknown}; expected seed, train, val, multi_round"
        )
    wanted = {
        "seed": settings["seed"],
        "train": settings["train"],
        "val": settings["val"],
        "multi_round": int(settings.get("multi_round", 0)),
    }
    if not manifest.is_file() or json.loads(manifest.read_text()).get("settings") != wanted:
        started = time.perf_counter()
        written = synth(
            root,
            seed=wanted["seed"],
            train=wanted["train"],
            val=wanted["val"],
            report=False,
            multi_round=bool(wanted["multi_round"]),
        )
        stored = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**stored, "settings": wanted}, indent=2))
        counts = ", ".join(f"{task} {n}" for task, n in written["train"].items())
        print(
            f"synthetic data: {root} in {time.perf_counter() - started:.1f} s; train records: "
            f"{counts}; held-out: {sum(written['val'].values())}",
            flush=True,
        )


def synthetic_sources(
    run_dir: Path, task_weights: dict[str, float] | None = None
) -> tuple[list[DataSource], list[DataSource]]:
    """The train sources of the demo tasks in the run directory, weighted (`DEMO_TASK_WEIGHTS`
    unless `task_weights` says otherwise; a task weighted 0 is left out), and every task's
    held-out source."""
    root = run_dir / "data"
    weights = DEMO_TASK_WEIGHTS | (task_weights or {})
    train = [
        DataSource(root / "tasks" / "train" / f"{task}.jsonl", weight, root)
        for task, weight in weights.items()
        if weight > 0
    ]
    held_out = [
        DataSource(root / "tasks" / "val" / f"{task}.jsonl", 1.0, root)
        for task in DEMO_TASK_WEIGHTS
    ]
    return train, held_out


def grounding_config(run: RunConfig, run_dir: Path) -> GroundingConfig | None:
    """The run's grounded pretraining, the synthetic demo's instances filled in."""
    if run.grounding is None:
        return None
    settings = dict(run.grounding)
    if "instances" not in settings:
        if run.synthetic is None:
            raise ValueError(
                "grounding needs instances (a COCO instances file) and images (its image root)"
            )
        root = run_dir / "data"
        settings.setdefault("instances", root / "instances_train.json")
        settings.setdefault("images", root / "images" / "train")
        settings.setdefault("eval_instances", root / "instances_val.json")
        settings.setdefault("eval_images", root / "images" / "val")
    if "images" not in settings:
        raise ValueError(f"grounding names instances {settings['instances']} but no images root")
    return GroundingConfig(**settings)


def _grounding_paths(settings: dict[str, Any] | None, base: Path) -> dict[str, Any] | None:
    if settings is None:
        return None
    settings = dict(settings)
    for key in GROUNDING_PATHS:
        if settings.get(key) is not None:
            path = Path(settings[key])
            settings[key] = str(path if path.is_absolute() else base / path)
    return settings


def _resolved(source: DataSource, base: Path) -> DataSource:
    path = source.path if source.path.is_absolute() else base / source.path
    images = source.images
    if images is not None and not images.is_absolute():
        images = base / images
    return dataclasses.replace(source, path=path, images=images)


def _source_dict(source: DataSource) -> dict[str, Any]:
    return {
        "path": str(source.path),
        "weight": source.weight,
        "images": str(source.images) if source.images else None,
    } | ({"images_outside_root": True} if source.images_outside_root else {})


def _scalar(raw: str) -> Any:
    """A YAML scalar, with numbers YAML 1.1 leaves as text (`1e-3`) read as numbers."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
