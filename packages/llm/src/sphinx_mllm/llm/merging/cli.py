"""`sphinx-merge CONFIG OUT`: merge checkpoints as a config file describes (our YAML or a
mergekit YAML), with a progress bar; `--dry-run` prints the plan instead.

OUT is written aside and renamed into place when complete, and locked for the whole run: a
second run into the same OUT fails at once. An existing OUT is replaced only with --force, and
only if it is an earlier output of sphinx-merge (it carries its marker file) that holds none of
the inputs (the config file, the models, the adapters).

Exit status: 0 on success; 2 for a problem with the config, the inputs or OUT (one line on
stderr naming it, nothing written); 1 for anything unexpected. --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from sphinx_mllm.core.cli import (
    OneLineArgumentParser,
    add_common_options,
    positive_int,
    run_command,
)
from sphinx_mllm.llm.merging.allocator import reuse_freed_memory
from sphinx_mllm.llm.merging.config import DTYPES, load_config
from sphinx_mllm.llm.merging.expression import Expression, LinearCombination, MethodCall
from sphinx_mllm.llm.merging.plan import MergePlan
from sphinx_mllm.llm.merging.runner import (
    DEFAULT_SHARD_BYTES,
    check_reference_files,
    describe_plan,
    make_plan,
    open_models,
    run_merge,
)

PROG = "sphinx-merge"
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`5GB`, `500M`, `1.5G`, `1048576` -> bytes (at least 1)."""
    match = SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[match[2].upper()]
    size = int(float(match[1]) * scale)
    if size < 1:
        raise argparse.ArgumentTypeError(f"a shard holds at least 1 byte, got {text!r}")
    return size


def build_parser() -> argparse.ArgumentParser:
    summary, details = __doc__.split("\n\n", 1)
    parser = OneLineArgumentParser(
        prog=PROG,
        description=" ".join(summary.split()),
        epilog=details.strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config", type=Path, help="our YAML (models + merge expression) or a mergekit YAML"
    )
    parser.add_argument(
        "out", type=Path, help="the output directory (written aside, renamed when complete)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print every tensor's fate and the memory estimate"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=max(1, torch.get_num_threads()),
        help="tensors computed at once (default: torch's thread count)",
    )
    parser.add_argument("--out-dtype", choices=sorted(DTYPES), help="dtype of the merged tensors")
    parser.add_argument(
        "--compute-dtype", choices=["float32", "float64"], help="arithmetic dtype (default float32)"
    )
    parser.add_argument(
        "--shard-size",
        type=parse_size,
        default=DEFAULT_SHARD_BYTES,
        help="largest shard, e.g. 5GB (the default) or 500MB",
    )
    parser.add_argument("--seed", type=int, help="seed of the random methods (DARE)")
    parser.add_argument(
        "--ranking",
        choices=["sort", "select"],
        help="how ties/breadcrumbs rank magnitudes: sort (mergekit's results exactly) or select "
        "(O(n) selection; ties at the cut broken by position)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it is an earlier output of sphinx-merge holding none of the inputs",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read PyTorch pickles (weights_only=True)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_options(parser, "sphinx-llm")
    return parser


def set_parameter(expression: Expression, name: str, value: object) -> None:
    """Set a global parameter on every method call of the expression that has it."""
    if isinstance(expression, MethodCall):
        if any(parameter.name == name for parameter in expression.method.parameters):
            expression.parameters[name] = value
        for item in [expression.base, *expression.inputs]:
            if item is not None:
                set_parameter(item, name, value)
    elif isinstance(expression, LinearCombination):
        for _, term in expression.terms:
            set_parameter(term, name, value)


def merge(argv: list[str]) -> int:
    """The command itself: parse, load the config, merge (or print the plan)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed
        return stop.code if isinstance(stop.code, int) else 2
    recipe = load_config(args.config)
    if args.out_dtype:
        recipe.out_dtype = DTYPES[args.out_dtype]
    if args.compute_dtype:
        recipe.compute_dtype = DTYPES[args.compute_dtype]
    if args.seed is not None:
        recipe.seed = args.seed
    if args.ranking is not None:
        set_parameter(recipe.expression, "ranking", args.ranking)
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    if args.dry_run:
        check_reference_files(recipe)
        checkpoints = open_models(recipe, args.allow_pickle)
        try:
            print(describe_plan(make_plan(recipe, checkpoints), recipe, args.threads))
        finally:
            for checkpoint in checkpoints.values():
                checkpoint.close()
        return 0
    bars: list[tqdm] = []  # shown once the plan is checked: a refused input prints only its error

    def start(plan: MergePlan) -> None:
        total = len(plan.outputs)
        bars.append(tqdm(desc="merging", unit="tensor", total=total, disable=args.no_progress))

    try:
        report = run_merge(
            recipe,
            args.out,
            shard_size=args.shard_size,
            threads=args.threads,
            force=args.force,
            allow_pickle=args.allow_pickle,
            progress=lambda count: bars[0].update(count),
            on_plan=start,
        )
    except BaseException:
        for bar in bars:
            bar.leave = False  # the error line replaces the bar
        raise
    finally:
        for bar in bars:
            bar.close()
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`sphinx-merge ARGS`; returns the exit status (see the module docstring)."""
    return run_command(PROG, merge, argv)


def main_entry() -> None:
    """Console script `sphinx-merge`."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
