"""Where each tensor of a LLaMA2-Accessory SPHINX release goes in a `SphinxModel`, and how it
changes on the way (`../shared/reference/accessory_format.md`, sections 2, 3 and 7).

- LLM: Meta-layout LLaMA to transformers names; `wq` and `wk` get the per-head rotary permutation
  (Accessory rotates adjacent pairs `(2i, 2i+1)`, transformers the halves `(i, i + d/2)`). Each
  model-parallel rank holds whole heads, so each rank's rows are permuted on their own.
- CLIP (`clip.visual.*`), the ConvNeXt trunk and the BLIP-2 parts keep their library names.
  CLIP's text-side leftovers (`token_embedding`, `positional_embedding`, `ln_final`,
  `text_projection`, `logit_scale`) are stored but unused by the released model: dropped.
- DINOv2: the hub's names become timm's (`mlp.w12` -> `mlp.fc1`, `mlp.w3` -> `mlp.fc2`, the unused
  `mask_token` dropped), and the 37x37 position embedding is interpolated once to the 16x16 grid
  of a 224 view exactly as the hub interpolates it at every forward (bicubic, scale factor
  `(16 + 0.1) / 37`, no antialiasing, in float32), so the converted model computes what the
  released code computes.
- `visual_proj`, `qformer_proj`, `start_img`, `end_img`: the channel-concat mixer's projectors and
  view markers (`visual_proj`'s input columns are [CLIP | ConvNeXt | DINOv2], the stream order).

Every tensor of the release is either moved or dropped by name; anything else is an error, as is
a model tensor left unfilled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sphinx_mllm.pipeline.accessory.architecture import ENCODERS
from sphinx_mllm.pipeline.accessory.release import AccessoryImportError, AccessoryRelease
from sphinx_mllm.pipeline.checkpoint import tied_aliases, weight_problems

DINOV2_INTERPOLATE_OFFSET = 0.1  # dinov2/hub/backbones.py: interpolate_offset

Transform = Callable[[AccessoryRelease, str], Iterator[torch.Tensor]]


@dataclass(frozen=True)
class Rule:
    """Release names matching `pattern` go to `target` (a `re` template; None: dropped, with
    `why`), through `transform` (default: the joined tensor as is)."""

    pattern: str
    target: str | None
    transform: str | None = None
    why: str = ""


_LLM = "llm.model.layers.\\1."
_CLIP = f"visual.encoders.{ENCODERS['clip']}.model."
_CONVNEXT = f"visual.encoders.{ENCODERS['openclip_convnext_xxl']}.model."
_DINOV2 = f"visual.encoders.{ENCODERS['dinov2_vitg14']}.model."
_QFORMER = f"visual.encoders.{ENCODERS['qformer']}.model."
_UNUSED_CLIP_TEXT = "the CLIP text tower's leftovers, unused by SPHINX"

RULES = (
    Rule(r"tok_embeddings\.weight", "llm.model.embed_tokens.weight"),
    Rule(r"layers\.(\d+)\.attention\.wq\.weight", _LLM + "self_attn.q_proj.weight", "q_heads"),
    Rule(r"layers\.(\d+)\.attention\.wk\.weight", _LLM + "self_attn.k_proj.weight", "kv_heads"),
    Rule(r"layers\.(\d+)\.attention\.wv\.weight", _LLM + "self_attn.v_proj.weight"),
    Rule(r"layers\.(\d+)\.attention\.wo\.weight", _LLM + "self_attn.o_proj.weight"),
    Rule(r"layers\.(\d+)\.feed_forward\.w1\.weight", _LLM + "mlp.gate_proj.weight"),
    Rule(r"layers\.(\d+)\.feed_forward\.w3\.weight", _LLM + "mlp.up_proj.weight"),
    Rule(r"layers\.(\d+)\.feed_forward\.w2\.weight", _LLM + "mlp.down_proj.weight"),
    Rule(r"layers\.(\d+)\.attention_norm\.weight", _LLM + "input_layernorm.weight"),
    Rule(r"layers\.(\d+)\.ffn_norm\.weight", _LLM + "post_attention_layernorm.weight"),
    Rule(r"norm\.weight", "llm.model.norm.weight"),
    Rule(r"output\.weight", "llm.lm_head.weight"),
    Rule(r"rope\.freqs", None, why="Meta's rotary frequencies, recomputed by transformers"),
    Rule(r"clip\.visual\.(.+)", _CLIP + "\\1"),
    Rule(
        r"clip\.(token_embedding\.weight|positional_embedding|text_projection|logit_scale)",
        None,
        why=_UNUSED_CLIP_TEXT,
    ),
    Rule(r"clip\.ln_final\.(weight|bias)", None, why=_UNUSED_CLIP_TEXT),
    Rule(r"openclip_convnext_xxl\.(.+)", _CONVNEXT + "\\1"),
    Rule(r"dinov2_vitg14\.mask_token", None, why="DINOv2's masking token, unused at inference"),
    Rule(r"dinov2_vitg14\.pos_embed", _DINOV2 + "pos_embed", "dinov2_positions"),
    Rule(
        r"dinov2_vitg14\.blocks\.(\d+)\.mlp\.w12\.(weight|bias)", _DINOV2 + "blocks.\\1.mlp.fc1.\\2"
    ),
    Rule(
        r"dinov2_vitg14\.blocks\.(\d+)\.mlp\.w3\.(weight|bias)", _DINOV2 + "blocks.\\1.mlp.fc2.\\2"
    ),
    Rule(r"dinov2_vitg14\.(.+)", _DINOV2 + "\\1"),
    Rule(r"qformer\.(.+)", _QFORMER + "\\1"),
    Rule(r"visual_proj\.([01])\.(weight|bias)", "visual.mixer.grid_projector.layers.\\1.\\2"),
    Rule(
        r"qformer_proj\.([01])\.(weight|bias)",
        f"visual.mixer.query_projectors.{ENCODERS['qformer']}.layers.\\1.\\2",
    ),
    Rule(r"start_img", "visual.mixer.format.start"),
    Rule(r"end_img", "visual.mixer.format.end"),
)
_COMPILED = [(re.compile(rule.pattern), rule) for rule in RULES]


@dataclass(frozen=True)
class Move:
    """One release tensor into one model tensor (`target`) of `shape`, by `transform`."""

    source: str
    target: str
    shape: tuple[int, ...]
    transform: str | None

    def parts(self, release: AccessoryRelease, heads: dict[str, int]) -> Iterator[torch.Tensor]:
        """The converted tensor as consecutive row blocks (in the stored dtype)."""
        if self.transform in ("q_heads", "kv_heads"):
            count = heads[self.transform] // release.world_size  # whole heads in each rank
            for piece in release.rank_parts(self.source):
                yield rotate_half_layout(piece, count)
        elif self.transform == "dinov2_positions":
            grid = math.isqrt(self.shape[1] - 1)
            yield hub_interpolated_positions(release.full(self.source), grid)
        else:
            yield from release.parts(self.source)


def rotate_half_layout(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of `heads` attention heads from Meta's interleaved rotary layout (pairs `2i, 2i+1`)
    to transformers' rotate-half layout (pairs `i, i + d/2`)."""
    rows, columns = weight.shape
    head_dim = rows // heads
    return weight.reshape(heads, head_dim // 2, 2, columns).transpose(1, 2).reshape(rows, columns)


def hub_interpolated_positions(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """DINOv2's `[1, 1 + M*M, C]` position embedding at a `grid` x `grid` patch grid, computed
    as the hub's `interpolate_pos_encoding` does for a `grid * patch` input."""
    stored = math.isqrt(pos_embed.shape[1] - 1)
    if stored * stored != pos_embed.shape[1] - 1:
        raise AccessoryImportError(
            f"llma.dinov2_vitg14.pos_embed has {pos_embed.shape[1] - 1} patch positions, "
            "not a square grid"
        )
    if stored == grid:
        return pos_embed.float()
    positions = pos_embed.float()
    scale = (grid + DINOV2_INTERPOLATE_OFFSET) / stored
    patches = positions[:, 1:].reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if tuple(patches.shape[-2:]) != (grid, grid):
        raise AccessoryImportError(
            f"DINOv2's {stored}x{stored} positions interpolate to {tuple(patches.shape[-2:])}, "
            f"not the model's {grid}x{grid} grid"
        )
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    # float32, as the hub computes it; the caller casts to the model's dtype, as the hub casts
    # to its input's
    return torch.cat([positions[:, :1], patches], dim=1)


def target_of(name: str) -> tuple[str | None, Rule | None]:
    """The model tensor a release tensor goes to (None: dropped or unknown) and its rule."""
    for regex, rule in _COMPILED:
        match = regex.fullmatch(name)
        if match:
            return (None if rule.target is None else match.expand(rule.target)), rule
    return None, None


def plan_moves(release: AccessoryRelease, state: dict[str, torch.Tensor]) -> list[Move]:
    """Every release tensor's move into the model whose state dict (names and shapes; the
    meta device will do) is `state`, in the release's order. Raises one error naming every
    unknown, unfilled, doubly filled or misshapen tensor."""
    # storage identity shows a tied head; on the meta device every tensor seems to share one
    on_meta = any(tensor.is_meta for tensor in state.values())
    aliases = {} if on_meta else tied_aliases(state)
    moves: list[Move] = []
    filled: dict[str, str] = {}
    unknown, duplicated, shapes = [], [], []
    for name, info in release.tensors.items():
        target, rule = target_of(name)
        if rule is None:
            unknown.append(f"llma.{name}")
            continue
        if target is None:
            continue
        if target not in state:
            unknown.append(f"llma.{name} (as {target})")
            continue
        target = aliases.get(target, target)
        if target in filled:
            duplicated.append(f"llma.{name} and llma.{filled[target]} both fill {target}")
            continue
        filled[target] = name
        expected = tuple(state[target].shape)
        converted = info.shape
        if rule.transform == "dinov2_positions" and len(info.shape) == 3:
            converted = (1, expected[1], info.shape[2])
        if converted != expected:
            shapes.append(f"llma.{name} {info.shape}, model {target} {expected}")
            continue
        moves.append(Move(name, target, expected, rule.transform))
    missing = sorted(name for name in state if name not in aliases and name not in filled)
    problems = weight_problems(missing, unknown, duplicated=duplicated, shapes=shapes)
    if problems:
        raise AccessoryImportError(
            f"The tensors of {release.directory} do not fit the {release.llama_type} model its "
            "config.json and shapes describe:\n" + "\n".join(problems)
        )
    return moves
