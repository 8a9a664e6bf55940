"""The config file of `sphinx-data mix`, validated, and the records it draws from its task files.

Every error names the config file and the key (`sources[1].weight`), or the task file and the
line, with what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from sphinx_mllm.data.mixtures import Mixture, MixtureSource, MixtureState, Strategy
from sphinx_mllm.data.readers import checks
from sphinx_mllm.data.readers.json_stream import load_json

MIX_CONFIG_FORMAT = """\
The config is a JSON object:

  {
    "sources": [{"path": "vqa.jsonl", "weight": 3}, {"path": "rec.jsonl", "weight": 1}],
    "strategy": "fixed",
    "total": 10000,
    "seed": 0
  }

  sources      a non-empty list of {"path", "weight"}: JSONL task files (a path is relative to
               the config's folder; each line a JSON object) and, for the fixed strategy, their
               weights (finite numbers >= 0, not all 0; default 1)
  strategy     how often each source is drawn: "fixed" (by weight, the default),
               "proportional" (by size), "capped" (by size, each size capped at `cap` first) or
               "temperature" (by size ** (1 / temperature))
  total        how many records to write (an integer > 0); a source drawn more often than it
               has records is drawn again in a new order
  seed         the integer the draws are a function of (default 0): the same config gives the
               same file
  cap          the capped strategy's cap (an integer >= 1; required by it, refused by the others)
  temperature  the temperature strategy's temperature (a number > 0, default 1; refused by the
               others)

Each record written is a line of its task file, as read; its `meta.task` tells the tasks
apart.
"""

KEYS = ("sources", "strategy", "total", "seed", "cap", "temperature")
SOURCE_KEYS = ("path", "weight")
STRATEGIES: tuple[str, ...] = get_args(Strategy)


@dataclass(frozen=True)
class MixConfig:
    """A validated mix config: the task files (resolved paths) with their weights."""

    path: Path
    sources: tuple[tuple[Path, float], ...]
    strategy: str
    total: int
    seed: int
    cap: int | None
    temperature: float


def read_mix_config(path: str | Path) -> MixConfig:
    """The config at `path`, checked key by key (see `MIX_CONFIG_FORMAT`)."""
    path = Path(path)
    config = load_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a mix config is a JSON object, not {type(config).__name__}")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a mix config has the keys {list(KEYS)}")
    if "sources" not in config or "total" not in config:
        raise ValueError(f"{path}: a mix config needs 'sources' and 'total'")
    strategy = config.get("strategy", "fixed")
    if strategy not in STRATEGIES:
        raise ValueError(f"{path}: strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    for key, needed in (("cap", "capped"), ("temperature", "temperature")):
        if key in config and strategy != needed:
            raise ValueError(
                f"{path}: {key!r} is for the {needed} strategy only, and strategy is {strategy!r}"
            )
    cap = config.get("cap")
    if strategy == "capped":
        cap = _integer(path, "cap", cap, minimum=1)
    temperature = _number(path, "temperature", config.get("temperature", 1.0))
    if temperature <= 0:
        raise ValueError(f"{path}: temperature must be > 0, got {temperature}")
    return MixConfig(
        path=path,
        sources=_sources(path, config["sources"], strategy),
        strategy=strategy,
        total=_integer(path, "total", config["total"], minimum=1),
        seed=_integer(path, "seed", config.get("seed", 0)),
        cap=cap,
        temperature=temperature,
    )


def _sources(path: Path, sources: Any, strategy: str) -> tuple[tuple[Path, float], ...]:
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"{path}: sources must be a non-empty list of {{path, weight}} objects")
    result: list[tuple[Path, float]] = []
    for index, entry in enumerate(sources):
        key = f"sources[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(
                f"{path}: {key} must be an object {{path, weight}}, got {checks.shown(entry)}"
            )
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(f"{path}: {key} has unknown keys {unknown}; expected {SOURCE_KEYS}")
        name = entry.get("path")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: {key}.path must be a file path, got {checks.shown(name)}")
        if "weight" in entry and strategy != "fixed":
            raise ValueError(
                f"{path}: {key}.weight is for the fixed strategy only, and strategy is {strategy!r}"
            )
        weight = _number(path, f"{key}.weight", entry.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"{path}: {key}.weight must be >= 0, got {weight}")
        file = path.parent / name
        for other, (earlier, _) in enumerate(result):
            if earlier.resolve() == file.resolve():
                raise ValueError(f"{path}: {key}.path is sources[{other}].path again ({file})")
        result.append((file, weight))
    if strategy == "fixed" and not any(weight > 0 for _, weight in result):
        raise ValueError(f"{path}: every sources[].weight is 0; nothing could be drawn")
    return tuple(result)


def _integer(path: Path, key: str, value: Any, minimum: int | None = None) -> int:
    try:
        number = checks.integer(value, key)
    except checks.RecordProblem as problem:
        raise ValueError(f"{path}: {problem}") from problem
    if minimum is not None and number < minimum:
        raise ValueError(f"{path}: {key} must be >= {minimum}, got {number}")
    return number


def _number(path: Path, key: str, value: Any) -> float:
    try:
        return checks.number(value, key)
    except checks.RecordProblem as problem:
        raise ValueError(f"{path}: {problem}") from problem


def draw_records(config: MixConfig) -> Iterator[dict]:
    """The `total` records of the mixture, in order: each a line of its task file."""
    lines = {str(file): _record_lines(file) for file, _ in config.sources}
    weights = [(str(file), weight) for file, weight in config.sources]
    mixture = Mixture(
        [MixtureSource(name, len(lines[name]), weight) for name, weight in weights],
        config.strategy,  # type: ignore[arg-type]
        cap=config.cap,
        temperature=config.temperature,
        seed=config.seed,
    )
    handles = {name: open(name, "rb") for name in lines}  # noqa: SIM115 (closed below)
    try:
        for name, index in mixture.iterate(config.total, MixtureState()):
            offset, number = lines[name][index]
            handle = handles[name]
            handle.seek(offset)
            yield _record(name, number, handle.readline())
    finally:
        for handle in handles.values():
            handle.close()


def _record_lines(path: Path) -> list[tuple[int, int]]:
    """(byte offset, line number) of each non-blank line of a JSONL file, every line checked
    first: a bad line is an error whether or not this mixture draws it."""
    lines, position = [], 0
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                _record(str(path), number, line)
                lines.append((position, number))
            position += len(line)
    if not lines:
        raise ValueError(f"{path} has no records")
    return lines


def _record(path: str, number: int, line: bytes) -> dict:
    try:
        record = json.loads(line)
    except RecursionError as error:
        raise ValueError(f"{path} line {number}: a value nested too deeply") from error
    except ValueError as error:
        raise ValueError(f"{path} line {number}: invalid JSON ({error})") from error
    if not isinstance(record, dict):
        raise ValueError(
            f"{path} line {number}: a record is a JSON object, not {type(record).__name__}"
        )
    return record
