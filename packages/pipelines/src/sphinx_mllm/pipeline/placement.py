"""Where visual tokens go in the LLM's input sequence.

Both placements end in one form: a sequence whose image positions hold the image-token id, one
per visual token, in the order the images are given (Hugging Face's LLaVA form). `prefix`
placement (SPHINX: `[BOS][visual tokens][text]`) first inserts those ids right after each
sample's BOS. Image positions are embedded as id 0 and then overwritten by the visual tokens, so
the image-token id need not exist in the LLM's embedding table; their labels are always ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class PlacedSequence:
    """Token ids with image positions marked, and the attention mask and labels that go with
    them (labels None when none were given)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    image_mask: torch.Tensor

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted over attended tokens only, so left padding does not shift them."""
        positions = self.attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)


def insert_prefix(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    counts: Sequence[int],
    image_token_id: int,
    bos_token_id: int | None,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Insert `counts[i]` image-token ids into row i right after its first attended token when
    that is BOS (else before it). Rows are padded again on the side the batch was padded on."""
    if len(counts) != input_ids.shape[0]:
        raise ValueError(
            f"Prefix placement takes one image per sample: {input_ids.shape[0]} samples, "
            f"{len(counts)} images"
        )
    left_padded = bool((attention_mask[:, 0] == 0).any()) and bool(attention_mask[:, -1].all())
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for row, count in enumerate(counts):
        attended = attention_mask[row].nonzero().flatten()
        if len(attended) == 0:
            raise ValueError(f"Sample {row} has no attended token to place its image after")
        first, last = int(attended[0]), int(attended[-1]) + 1
        ids = input_ids[row, first:last]
        at = 1 if bos_token_id is not None and int(ids[0]) == bos_token_id else 0
        image = ids.new_full((count,), image_token_id)
        new_ids = torch.cat([ids[:at], image, ids[at:]])
        new_labels = None
        if labels is not None:
            text_labels = labels[row, first:last]
            ignored = text_labels.new_full((count,), IGNORE_INDEX)
            new_labels = torch.cat([text_labels[:at], ignored, text_labels[at:]])
        rows.append((new_ids, torch.ones_like(new_ids), new_labels))
    length = max(len(ids) for ids, _, _ in rows)

    def pad(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
        padded = []
        for tensor in tensors:
            filler = tensor.new_full((length - len(tensor),), value)
            padded.append(torch.cat([filler, tensor] if left_padded else [tensor, filler]))
        return torch.stack(padded)

    new_input_ids = pad([ids for ids, _, _ in rows], pad_token_id)
    new_mask = pad([mask for _, mask, _ in rows], 0)
    new_labels = None if labels is None else pad([lab for _, _, lab in rows], IGNORE_INDEX)
    return new_input_ids, new_mask, new_labels


def place(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_token_id: int,
    visual_counts: Sequence[int],
) -> PlacedSequence:
    """Check that the image positions match the visual tokens and ignore their labels."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids "
            f"{tuple(input_ids.shape)}"
        )
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match input_ids {tuple(input_ids.shape)}"
        )
    image_mask = input_ids == image_token_id
    found, expected = int(image_mask.sum()), int(sum(visual_counts))
    if found != expected:
        per_row = image_mask.sum(dim=1).tolist()
        raise ValueError(
            f"The batch holds {found} image-token positions (id {image_token_id}; per sample "
            f"{per_row}) but its {len(visual_counts)} image(s) give {expected} visual tokens "
            f"({list(visual_counts)}); render prompts with the model's visual token count per image"
        )
    if labels is not None:
        labels = labels.masked_fill(image_mask, IGNORE_INDEX)
    return PlacedSequence(input_ids, attention_mask, labels, image_mask)


def scatter_visual_tokens(
    embeddings: torch.Tensor, image_mask: torch.Tensor, tokens: torch.Tensor, lengths: Sequence[int]
) -> torch.Tensor:
    """Overwrite the image positions of `embeddings [B, L, d]` with the real (unpadded) visual
    tokens `tokens [num_images, N, d]`, image after image in reading order."""
    if not image_mask.any():
        return embeddings
    if len(set(lengths)) == 1:
        flat = tokens[:, : lengths[0]].reshape(-1, tokens.shape[-1])
    else:
        flat = torch.cat([image[:length] for image, length in zip(tokens, lengths, strict=True)])
    flat = flat.to(embeddings.dtype)
    return embeddings.masked_scatter(image_mask.unsqueeze(-1), flat)
