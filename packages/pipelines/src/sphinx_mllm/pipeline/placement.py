"""Visual tokens into the LLM's input sequence.

The processor (`SphinxProcessor`) decides where images go and writes each as a run of the
image-token id, one per visual token, in the order the images are given (Hugging Face's LLaVA
form). Here those positions are checked against the visual tokens, embedded as id 0 and then
overwritten, so the image-token id need not exist in the LLM's embedding table; their labels
are always ignored.
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
            f"({list(visual_counts)}); make the inputs with the model's processor"
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
