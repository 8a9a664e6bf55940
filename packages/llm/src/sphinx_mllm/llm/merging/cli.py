"""`sphinx-merge CONFIG OUT`: merge checkpoints as a config file describes (our YAML or a
mergekit YAML), with a progress bar; `--dry-run` prints the plan instead.

Exit status: 0 on success, 2 for a problem with the config or the inputs (reported in one
message, nothing written), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.llm.merging.allocator import reuse_freed_memory
from sphinx_mllm.llm.merging.config import ConfigError, load_config
from sphinx_mllm.llm.merging.expression import Expression, LinearCombination, MethodCall
from sphinx_mllm.llm.merging.plan import MergePlanError
from sphinx_mllm.llm.merging.runner import (
    DEFAULT_SHARD_BYTES,
    describe_plan,
    make_plan,
    open_models,
    run_merge,
)

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`5GB`, `500M`, `1.5G`, `1048576` -> bytes."""
    match = SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[match[2].upper()]
    return int(float(match[1]) * scale)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sphinx-merge", description=__doc__.splitlines()[0])
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
        type=int,
        default=max(1, torch.get_num_threads()),
        help="tensors computed at once",
    )
    parser.add_argument("--out-dtype", choices=sorted(DTYPES), help="dtype of the merged tensors")
    parser.add_argument(
        "--compute-dtype", choices=["float32", "float64"], help="arithmetic dtype (default float32)"
    )
    parser.add_argument(
        "--shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES, help="largest shard, e.g. 5GB"
    )
    parser.add_argument("--seed", type=int, help="seed of the random methods (DARE)")
    parser.add_argument(
        "--ranking",
        choices=["sort", "select"],
        help="how ties/breadcrumbs rank magnitudes: sort (mergekit's results exactly) or select "
        "(O(n) selection; ties at the cut broken by position)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read PyTorch pickles (weights_only=True)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        recipe = load_config(args.config)
        if args.out_dtype:
            recipe.out_dtype = DTYPES[args.out_dtype]
        if args.compute_dtype:
            recipe.compute_dtype = DTYPES[args.compute_dtype]
        if args.seed is not None:
            recipe.seed = args.seed
        if args.ranking is not None:
            set_parameter(recipe.expression, "ranking", args.ranking)
        torch.set_num_threads(max(1, args.threads))
        reuse_freed_memory()
        if args.dry_run:
            checkpoints = open_models(recipe, args.allow_pickle)
            print(describe_plan(make_plan(recipe, checkpoints), recipe, args.threads))
            return 0
        with tqdm(desc="merging", unit="tensor", disable=args.no_progress, total=None) as bar:
            report = run_merge(
                recipe,
                args.out,
                shard_size=args.shard_size,
                threads=args.threads,
                force=args.force,
                allow_pickle=args.allow_pickle,
                progress=bar.update,
                on_plan=lambda plan: setattr(bar, "total", len(plan.outputs)),
            )
    except (
        ConfigError,
        MergePlanError,
        CheckpointError,
        FileExistsError,
        FileNotFoundError,
    ) as error:
        print(f"sphinx-merge: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def main_entry() -> None:
    """Console script `sphinx-merge`."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
