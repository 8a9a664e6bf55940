"""`sphinx-data`: build task data from public annotation files, make the synthetic demo data, and
mix task files.

    sphinx-data build TASK --source FORMAT PATH [PATH ...] --out FILE.jsonl [--on-error skip]
    sphinx-data synth --out DIR [--seed 0] [--train 200] [--val 50] [--multi-round]
    sphinx-data merge-rounds FILE --out FILE.jsonl [--max-rounds N]
    sphinx-data mix CONFIG.json --out FILE.jsonl

Progress goes to stderr; a summary of the records written and dropped (by reason) ends each run.
Output files are written aside and renamed into place when complete, so a failed run writes
nothing; an existing output is replaced only with --force, and never when it is one of the
command's inputs. A bad input ends the run with one line naming it (file, record or key) and
what was expected, and exit status 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sphinx_mllm.core.cli import (
    OneLineArgumentParser,
    add_common_options,
    positive_int,
    run_command,
)
from sphinx_mllm.core.outputs import OutputError, OutputExistsError, atomic_file
from sphinx_mllm.data.boxes import STYLES
from sphinx_mllm.data.mix_config import MIX_CONFIG_FORMAT, draw_records, read_mix_config
from sphinx_mllm.data.multiturn import merge_rounds
from sphinx_mllm.data.readers import CocoFile, Problems, read_vqav2
from sphinx_mllm.data.readers.llava import read_llava
from sphinx_mllm.data.registry import get_task_builder, list_task_builders
from sphinx_mllm.data.sources import FORMATS, open_source
from sphinx_mllm.data.synthetic import IMAGE_FILE_PATTERN, write_synthetic_dataset
from sphinx_mllm.data.synthetic_tasks import grounded_captions, referring_expressions
from sphinx_mllm.data.tasks.base import Sample, TaskBuilder

PROG = "sphinx-data"
SOURCE_ONLY_OPTIONS = ("split", "image_pattern", "allow_outside")  # consumed by the source


def write_jsonl(path: Path, records: Iterable[dict], label: str, *, report: bool = True) -> int:
    """Write records to `path` atomically (nothing is left there when writing fails), showing a
    count on stderr (a live one when stderr is a terminal; none at all without `report`);
    returns the count."""
    count, started, shown = 0, time.monotonic(), 0.0
    with atomic_file(path, "w", encoding="utf-8") as out:
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
    if report:
        print(f"\r{label}: {count} records written to {path}" + " " * 10, file=sys.stderr)
    return count


def check_output(out: Path, inputs: Iterable[Path], *, force: bool) -> None:
    """Refuse an `--out` that is one of the inputs (writing it would destroy that input) or a
    directory, and an existing one unless `force`."""
    for path in inputs:
        if _same_file(out, path):
            raise OutputError(
                f"--out {out} is also an input of this command ({path}); writing it would "
                "destroy that input: choose another output"
            )
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory; give the path of a file")
    if out.exists() and not force:
        raise OutputExistsError(f"--out {out} exists; choose another output or pass --force")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links too


def build(task: str, format_name: str, paths: list[Path], out: Path, options: dict) -> TaskBuilder:
    """Build `task` from a source of `format_name` into `out`; returns the builder (its stats).
    `options` are the builder's, plus the source's (`split`, `image_pattern`, `allow_outside`)."""
    builder_options = {k: v for k, v in options.items() if v is not None}
    problems = Problems(builder_options.get("on_error", "raise"))
    source = open_source(task, format_name, paths, problems, builder_options)
    for name in SOURCE_ONLY_OPTIONS:
        builder_options.pop(name, None)
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
    with atomic_file(out / "tasks" / "manifest.json", "w", encoding="utf-8") as file:
        file.write(
            json.dumps({"seed": seed, "records": written, "data": manifest["splits"]}, indent=2)
        )
    return written


def _in_split(sample: Sample, split: str) -> dict:
    """Image paths relative to the dataset root (images/<split>/<file>)."""
    record = sample.to_record()
    if sample.image is not None:
        record["image"] = f"images/{split}/{sample.image}"
    return record


def mix(config_path: Path, out: Path, *, force: bool = False) -> int:
    """Draw the records a mix config asks for (see `mix_config`) into `out`; returns the count."""
    config = read_mix_config(config_path)
    check_output(out, [config_path, *(file for file, _ in config.sources)], force=force)
    return write_jsonl(out, draw_records(config), "mix")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    parser.add_argument(
        "--force", action="store_true", help="replace --out when it exists (never an input)"
    )


def _formats_text() -> str:
    return "; ".join(f"{name}: {' '.join(f.paths)}" for name, f in sorted(FORMATS.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Run `sphinx-data COMMAND --help` for the options of a command.",
    )
    add_common_options(parser, "sphinx-data")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    building = commands.add_parser(
        "build",
        help="build one task's records from a public source",
        description="Build one task's records (LLaVA-style JSONL) from a public annotation "
        f"source. Formats and the paths each takes: {_formats_text()}.",
    )
    building.add_argument("task", help=f"one of {list_task_builders()}")
    building.add_argument(
        "--source",
        nargs="+",
        required=True,
        metavar=("FORMAT", "PATH"),
        help=f"FORMAT PATH...; formats: {sorted(FORMATS)}",
    )
    _add_output_options(building)
    building.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="a bad record stops the run (raise, the default) or is skipped and counted",
    )
    building.add_argument("--split", help="RefCOCO split to keep (train, val, testA, ...)")
    building.add_argument("--style", choices=sorted(STYLES), help="box text style")
    building.add_argument("--frame", choices=["padded", "per_axis"], help="box coordinate frame")
    building.add_argument("--max-boxes", type=positive_int, help="boxes per sample (default 30)")
    building.add_argument("--seed", type=int, help="seed of the instruction choice")
    building.add_argument(
        "--image-pattern",
        help="VQAv2 image file name pattern, e.g. COCO_train2014_{image_id:012d}.jpg",
    )
    building.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="accept image names that leave the image root (absolute, or with '..'); by "
        "default such a record is bad",
    )
    synthesis = commands.add_parser(
        "synth",
        help="write the synthetic multi-task demo data",
        description="Write the synthetic dataset (shape scenes, stick figures, pages in the "
        "COCO, PubLayNet and VQAv2 formats) and every demo task built from it, per split. An "
        "earlier synthetic dataset at --out is replaced; any other non-empty folder is refused.",
    )
    synthesis.add_argument("--out", type=Path, required=True, help="the folder to write")
    synthesis.add_argument("--seed", type=int, default=0)
    synthesis.add_argument("--train", type=int, default=200, help="items of each kind")
    synthesis.add_argument("--val", type=int, default=50, help="held-out items of each kind")
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
    _add_output_options(merging)
    merging.add_argument("--max-rounds", type=int, help="rounds per merged record (default: all)")
    merging.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="accept image names that leave the image root (absolute, or with '..')",
    )
    mixing = commands.add_parser(
        "mix",
        help="mix task files as a JSON config of sources and weights asks",
        description="Draw records from JSONL task files into one file, as a JSON config asks.\n"
        "Example: sphinx-data mix mix.json --out mixed.jsonl",
        epilog=MIX_CONFIG_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mixing.add_argument("config", type=Path, help="the mix config (a JSON file; see below)")
    _add_output_options(mixing)
    return parser


def _run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "build":
        format_name, paths = args.source[0], [Path(p) for p in args.source[1:]]
        check_output(args.out, paths, force=args.force)
        options = {
            "on_error": args.on_error,
            "style": args.style,
            "frame": args.frame,
            "max_boxes": args.max_boxes,
            "seed": args.seed,
            "split": args.split,
            "image_pattern": args.image_pattern,
            "allow_outside": args.allow_outside_images,
        }
        builder = build(args.task, format_name, paths, args.out, options)
        print(builder.stats.summary())
    elif args.command == "synth":
        written = synth(args.out, args.seed, args.train, args.val, multi_round=args.multi_round)
        for split, counts in written.items():
            print(f"{split}: " + ", ".join(f"{task} {count}" for task, count in counts.items()))
    elif args.command == "merge-rounds":
        check_output(args.out, [args.input], force=args.force)
        records = read_llava(args.input, Problems("raise"), allow_outside=args.allow_outside_images)
        merged = merge_rounds(records, max_rounds=args.max_rounds)
        count = write_jsonl(args.out, merged, args.out.name, report=False)
        print(f"{count} records written to {args.out}")
    else:
        count = mix(args.config, args.out, force=args.force)
        print(f"{count} records written to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a `sphinx-data` command; returns its exit status (see the module docstring)."""
    return run_command(PROG, _run, argv)


def main_entry() -> None:
    sys.exit(main())
