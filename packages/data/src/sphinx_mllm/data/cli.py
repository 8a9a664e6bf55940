"""`sphinx-data`: build task data from public annotation files, make the synthetic demo data,
and mix task files.

    sphinx-data build TASK --source FORMAT PATH [PATH ...] --out FILE.jsonl [--on-error skip]
    sphinx-data synth --out DIR [--seed 0] [--train 200] [--val 50] [--multi-round]
    sphinx-data merge-rounds FILE --out FILE.jsonl [--max-rounds N]
    sphinx-data mix CONFIG.json --out FILE.jsonl

Progress goes to stderr; a summary of the records written and dropped (by reason) ends each run.
Output files are written aside and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from sphinx_mllm.data.mixtures import Mixture, MixtureSource, MixtureState
from sphinx_mllm.data.multiturn import merge_rounds
from sphinx_mllm.data.readers import AnnotationFormatError, CocoFile, Problems, read_vqav2
from sphinx_mllm.data.readers.llava import read_llava
from sphinx_mllm.data.registry import get_task_builder, list_task_builders
from sphinx_mllm.data.sources import FORMATS, open_source
from sphinx_mllm.data.synthetic import IMAGE_FILE_PATTERN, write_synthetic_dataset
from sphinx_mllm.data.synthetic_tasks import grounded_captions, referring_expressions
from sphinx_mllm.data.tasks.base import Sample, TaskBuilder


def write_jsonl(path: Path, records: Iterable[dict], label: str, *, report: bool = True) -> int:
    """Write records to `path` atomically, showing a count on stderr (a live one when stderr is
    a terminal; none at all without `report`); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count, started, shown = 0, time.monotonic(), 0.0
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
                if report and sys.stderr.isatty() and time.monotonic() - shown > 0.5:
                    shown = time.monotonic()
                    print(
                        f"\r{label}: {count} records ({count / max(shown - started, 1e-9):,.0f}/s)",
                        end="",
                        file=sys.stderr,
                    )
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    if report:
        print(f"\r{label}: {count} records written to {path}" + " " * 10, file=sys.stderr)
    return count


def build(task: str, format_name: str, paths: list[Path], out: Path, options: dict) -> TaskBuilder:
    builder_options = {k: v for k, v in options.items() if v is not None}
    problems = Problems(builder_options.get("on_error", "raise"))
    source = open_source(task, format_name, paths, problems, builder_options)
    for source_only in ("split", "image_pattern"):  # consumed (or ignored) by the source
        builder_options.pop(source_only, None)
    builder = get_task_builder(task)(source_name=format_name, **builder_options)
    write_jsonl(out, (sample.to_record() for sample in builder.build(source)), task)
    for reason, count in problems.skipped.items():
        builder.stats.dropped[f"source: {reason}"] += count
    return builder


MULTI_ROUND_TASKS = ("vqa", "rec", "reg")


def synth(
    out: Path,
    seed: int,
    train: int,
    val: int,
    *,
    report: bool = True,
    max_objects: int = 5,
    multi_round: bool = False,
) -> dict[str, dict[str, int]]:
    """Write the synthetic dataset and build every task of the demo from it, per split
    (`report=False`: without a line per file written; `max_objects` per shape scene).
    `multi_round`: the training records of VQA, REC and REG are merged into one conversation
    per image, as LLaVA-1.5 trains on VQAv2 and RefCOCO; held-out records stay one question
    each, so each answer is scored alone."""
    manifest = write_synthetic_dataset(
        out, seed=seed, num_train=train, num_val=val, overwrite=True, max_objects=max_objects
    )
    written: dict[str, dict[str, int]] = {}
    for split in ("train", "val"):
        files = {
            "vqa": (
                "vqa",
                read_vqav2(
                    out / f"vqa_questions_{split}.json",
                    out / f"vqa_annotations_{split}.json",
                    image_pattern=IMAGE_FILE_PATTERN,
                ),
            ),
            "rec": ("rec", referring_expressions(CocoFile(out / f"instances_{split}.json"), split)),
            "reg": ("reg", referring_expressions(CocoFile(out / f"instances_{split}.json"), split)),
            "grounded_caption": (
                "grounded_caption",
                grounded_captions(CocoFile(out / f"instances_{split}.json")),
            ),
            "detection": ("detection", [CocoFile(out / f"instances_{split}.json")]),
            "pose": ("pose", [CocoFile(out / f"person_keypoints_{split}.json")]),
            "layout": ("layout", [CocoFile(out / f"layout_{split}.json")]),
            "short_caption": ("short_caption", CocoFile(out / f"captions_{split}.json").captions()),
        }
        written[split] = {}
        for name, (task, source) in files.items():
            options = (
                {"images": CocoFile(out / f"captions_{split}.json").images}
                if task == "short_caption"
                else {}
            )
            builder = get_task_builder(task)(source_name="synthetic", seed=seed, **options)
            samples = (_in_split(sample, split) for sample in builder.build(source))
            if multi_round and split == "train" and name in MULTI_ROUND_TASKS:
                samples = merge_rounds(samples)
            written[split][name] = write_jsonl(
                out / "tasks" / split / f"{name}.jsonl", samples, f"{split}/{name}", report=report
            )
    (out / "tasks" / "manifest.json").write_text(
        json.dumps({"seed": seed, "records": written, "data": manifest["splits"]}, indent=2)
    )
    return written


def _in_split(sample: Sample, split: str) -> dict:
    """Image paths relative to the dataset root (images/<split>/<file>)."""
    record = sample.to_record()
    if sample.image is not None:
        record["image"] = f"images/{split}/{sample.image}"
    return record


def mix(config_path: Path, out: Path) -> int:
    """Draw `total` records from JSONL task files with a mixture strategy (see mixtures.py)."""
    config = json.loads(config_path.read_text())
    unknown = set(config) - {"sources", "strategy", "total", "seed", "cap", "temperature"}
    if unknown:
        raise ValueError(f"{config_path}: unknown keys {sorted(unknown)}")
    files = [
        (
            Path(entry["path"])
            if Path(entry["path"]).is_absolute()
            else config_path.parent / entry["path"],
            entry,
        )
        for entry in config["sources"]
    ]
    offsets = {str(path): _line_offsets(path) for path, _ in files}
    sources = [
        MixtureSource(str(path), len(offsets[str(path)]), float(entry.get("weight", 1.0)))
        for path, entry in files
    ]
    mixture = Mixture(
        sources,
        config.get("strategy", "fixed"),
        cap=config.get("cap"),
        temperature=config.get("temperature", 1.0),
        seed=int(config.get("seed", 0)),
    )
    total = int(config["total"])
    return write_jsonl(out, _read_lines(mixture.iterate(total, MixtureState()), offsets), "mix")


def _line_offsets(path: Path) -> list[int]:
    offsets, position = [], 0
    with path.open("rb") as lines:
        for line in lines:
            if line.strip():
                offsets.append(position)
            position += len(line)
    if not offsets:
        raise ValueError(f"{path} has no records")
    return offsets


def _read_lines(draws: Iterator[tuple[str, int]], offsets: dict[str, list[int]]) -> Iterator[dict]:
    handles = {path: open(path, "rb") for path in offsets}  # noqa: SIM115 (closed below)
    try:
        for path, index in draws:
            handle = handles[path]
            handle.seek(offsets[path][index])
            yield json.loads(handle.readline())
    finally:
        for handle in handles.values():
            handle.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sphinx-data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    building = commands.add_parser("build", help="build one task's records from a public source")
    building.add_argument("task", help=f"one of {list_task_builders()}")
    building.add_argument(
        "--source",
        nargs="+",
        required=True,
        metavar=("FORMAT", "PATH"),
        help=f"FORMAT PATH...; formats: {sorted(FORMATS)}",
    )
    building.add_argument("--out", type=Path, required=True)
    building.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    building.add_argument("--split", help="RefCOCO split to keep (train, val, testA, ...)")
    building.add_argument(
        "--style", help="box text style (sphinx, llava, shikra, qwen_vl, minigpt_v2)"
    )
    building.add_argument("--frame", choices=["padded", "per_axis"])
    building.add_argument("--max-boxes", type=int)
    building.add_argument("--seed", type=int)
    building.add_argument(
        "--image-pattern",
        help="VQAv2 image file name pattern, e.g. COCO_train2014_{image_id:012d}.jpg",
    )
    synthesis = commands.add_parser("synth", help="write the synthetic multi-task demo data")
    synthesis.add_argument("--out", type=Path, required=True)
    synthesis.add_argument("--seed", type=int, default=0)
    synthesis.add_argument("--train", type=int, default=200)
    synthesis.add_argument("--val", type=int, default=50)
    synthesis.add_argument(
        "--multi-round",
        action="store_true",
        help="merge the training questions of an image into one conversation (VQA, REC, REG)",
    )
    merging = commands.add_parser(
        "merge-rounds",
        help="merge the one-round records of each image into multi-round conversations",
        description="Merge records that share an image and a task into one multi-round "
        "conversation (LLaVA-1.5's treatment of VQAv2 and RefCOCO). Example: sphinx-data "
        "merge-rounds vqa.jsonl --out vqa_multi.jsonl --max-rounds 8",
    )
    merging.add_argument("input", type=Path, help="a LLaVA JSON or JSONL file")
    merging.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    merging.add_argument("--max-rounds", type=int, help="rounds per merged record (default: all)")
    mixing = commands.add_parser(
        "mix", help="mix task files (a JSON config of sources and weights)"
    )
    mixing.add_argument("config", type=Path)
    mixing.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            format_name, paths = args.source[0], [Path(p) for p in args.source[1:]]
            options = {
                "on_error": args.on_error,
                "style": args.style,
                "frame": args.frame,
                "max_boxes": args.max_boxes,
                "seed": args.seed,
                "split": args.split,
                "image_pattern": args.image_pattern,
            }
            builder = build(args.task, format_name, paths, args.out, options)
            print(builder.stats.summary())
        elif args.command == "synth":
            written = synth(args.out, args.seed, args.train, args.val, multi_round=args.multi_round)
            for split, counts in written.items():
                print(f"{split}: " + ", ".join(f"{task} {count}" for task, count in counts.items()))
        elif args.command == "merge-rounds":
            records = read_llava(args.input, Problems("raise"))
            merged = merge_rounds(records, max_rounds=args.max_rounds)
            count = write_jsonl(args.out, merged, args.out.name, report=False)
            print(f"{count} records written to {args.out}")
        else:
            print(f"{mix(args.config, args.out)} records written to {args.out}")
    except (
        AnnotationFormatError,
        ValueError,
        LookupError,
        FileNotFoundError,
        FileExistsError,
    ) as error:
        print(f"sphinx-data: {error}", file=sys.stderr)
        return 2
    return 0


def main_entry() -> None:
    sys.exit(main())
