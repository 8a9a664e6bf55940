"""LoRA adapters in the merge algebra: `lora(path)` is the weight-space update of a peft LoRA
adapter, `scale * B @ A` for every adapted weight and zero elsewhere, computed in the compute
dtype from the adapter's own factors.

    merged = base + lora("adapter")                          # merge an adapter exactly
    combined = base + 0.5 * lora("a") + 0.5 * lora("b")      # combine adapters in weight space

Combining in weight space adds the products B_k A_k; averaging A and B separately would add
cross terms B_i A_j. `scale` is `lora_alpha / r` (`/ sqrt(r)` with rsLoRA), with peft's
per-module `rank_pattern` and `alpha_pattern`. DoRA, LoRA biases and `modules_to_save` are
refused with a clear error rather than merged wrongly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from sphinx_mllm.core.weight_files import CheckpointError
from sphinx_mllm.llm.merging.checkpoint import ModelCheckpoint
from sphinx_mllm.llm.merging.expression import Expression, Model, TensorContext
from sphinx_mllm.llm.merging.finite import NonFiniteError, all_finite

PEFT_PREFIX = "base_model.model."
FACTOR = re.compile(
    r"^(?P<module>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
)


class LoraDelta(Expression):
    """The weight-space update `scale * B @ A` of a peft LoRA adapter directory."""

    def __init__(self, path: str | Path, scale: float = 1.0) -> None:
        self.path = Path(path)
        self.scale = float(scale)
        self.name = f"lora:{self.path.name}"
        config_file = self.path / "adapter_config.json"
        if not config_file.is_file():
            raise CheckpointError(
                f"{self.path} is not a peft adapter directory (no adapter_config.json)"
            )
        self.config = json.loads(config_file.read_text())
        self._refuse_unsupported()
        self.checkpoint = ModelCheckpoint(self.path, name=self.name)
        self.factors = self._pair_factors()

    def __repr__(self) -> str:
        return f"lora({str(self.path)!r})" + ("" if self.scale == 1.0 else f" * {self.scale:g}")

    def _refuse_unsupported(self) -> None:
        config = self.config
        if config.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"{self.path}: a {config.get('peft_type')} adapter, not LoRA")
        for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA biases")):
            if config.get(flag):
                raise CheckpointError(
                    f"{self.path}: {what} cannot be merged as a weight update here"
                )
        if config.get("modules_to_save"):
            raise CheckpointError(
                f"{self.path}: modules_to_save {config['modules_to_save']} replace whole weights; "
                "merge them by copying those tensors instead"
            )

    def _pair_factors(self) -> dict[str, tuple[str, str, bool]]:
        """Base weight name -> (A key, B key, is_embedding)."""
        found: dict[str, dict[str, str]] = {}
        for key in self.checkpoint.names():
            match = FACTOR.match(key)
            if match is None:
                raise CheckpointError(f"{self.path}: tensor {key!r} is not a LoRA factor")
            module = match["module"].removeprefix(PEFT_PREFIX)
            found.setdefault(module, {})[match["kind"]] = key
        factors = {}
        for module, keys in found.items():
            embedding = "embedding_A" in keys
            a_key, b_key = (
                (keys.get("embedding_A"), keys.get("embedding_B"))
                if embedding
                else (keys.get("A"), keys.get("B"))
            )
            if a_key is None or b_key is None:
                raise CheckpointError(f"{self.path}: module {module!r} lacks its A or B factor")
            factors[f"{module}.weight"] = (a_key, b_key, embedding)
        return factors

    def scaling(self, weight_name: str) -> float:
        module = weight_name.removesuffix(".weight")
        rank = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"])
        alpha = _pattern_value(
            self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"]
        )
        return alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)

    def models(self) -> Iterator[Model]:
        return iter(())

    def input_paths(self) -> Iterator[Path]:
        yield self.path

    def contributes(self, tensor_name: str) -> bool:
        return tensor_name in self.factors

    def problems(self, reference: ModelCheckpoint) -> list[str]:
        issues = []
        for name, (a_key, b_key, embedding) in self.factors.items():
            rank_a, rank_b = self.checkpoint.shape(a_key)[0], self.checkpoint.shape(b_key)[-1]
            shape = (self.checkpoint.shape(b_key)[0], self.checkpoint.shape(a_key)[1])
            expected = (
                (shape[1], shape[0])
                if embedding ^ bool(self.config.get("fan_in_fan_out"))
                else shape
            )
            if name not in reference:
                issues.append(
                    f"tensor {name!r}: adapted by {self.name!r} but missing in {reference.name!r}"
                )
            elif rank_a != rank_b or reference.shape(name) != expected:
                issues.append(
                    f"tensor {name!r}: {self.name!r} gives an update of shape {expected} (ranks "
                    f"{rank_a}/{rank_b}), {reference.name!r} has {reference.shape(name)}"
                )
        return issues

    def evaluate(self, context: TensorContext) -> torch.Tensor:
        if context.name not in self.factors:
            return torch.zeros(context.shape, dtype=context.compute_dtype)
        a_key, b_key, embedding = self.factors[context.name]
        a = self.checkpoint.get(a_key).to(context.compute_dtype)
        b = self.checkpoint.get(b_key).to(context.compute_dtype)
        for key, factor in ((a_key, a), (b_key, b)):  # low rank: checking them costs little
            if not all_finite(factor):
                raise NonFiniteError(
                    f"{self.checkpoint.file_of(key)}: LoRA factor {key!r} holds NaN or infinite "
                    f"values (in {context.compute_dtype})"
                )
        delta = b @ a
        if embedding ^ bool(self.config.get("fan_in_fan_out")):
            delta = delta.T
        return delta * (self.scaling(context.name) * self.scale)


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """peft's per-module override: a key matches a module name that ends with it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def lora(path: str | Path, scale: float = 1.0) -> LoraDelta:
    """The weight update of the peft LoRA adapter at `path`, times `scale`."""
    return LoraDelta(path, scale)
