"""Text generation for `SphinxModel` through transformers' `generate`: the processor makes the
prompts (left padded, each image's visual-token run in place), the model embeds them once with
its visual tokens, and the LLM's own `generate` continues from those embeddings with its KV
cache: greedy, sampling (temperature, top-k, top-p), repetition penalty, beam search, stop
strings and streamers are transformers' own.

```python
answer(model, [image], ["What is in the image?"])              # -> ["A cat on a sofa."]

inputs = model.processor([[{"from": "human", "value": "Describe it."}]], [[image]], generation=True)
output = model.generate(**inputs, max_new_tokens=64)
output.texts, output.finished_by                               # (["A cat ..."], ["stop"])
```
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from PIL import Image

    from sphinx_mllm.pipeline.model import Pixels, SphinxModel
    from sphinx_mllm.pipeline.processor import SphinxProcessor

FinishReason = Literal["eos", "stop", "length"]


@dataclass
class GenerationOutput:
    """The new tokens of each row, `[B, longest]`, padded with the pad id after the row ended.
    A row's tokens include the EOS or the stop string's tokens that ended it; `texts` (when the
    model has a tokenizer) leave out special tokens and cut the text at the stop string.
    `lengths` counts each row's new tokens; `finished_by` says why each row ended."""

    sequences: torch.Tensor
    lengths: torch.Tensor
    finished_by: list[FinishReason]
    texts: list[str] | None = None


@torch.no_grad()
def generate(
    model: SphinxModel,
    input_ids: torch.Tensor,
    pixel_values: Pixels | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    stop_strings: Sequence[str] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    streamer: Any = None,
    normalized: bool = False,
) -> GenerationOutput:
    """Continue each row of a left-padded batch of prompts (`processor(..., generation=True)`)
    by up to `max_new_tokens`, with the LLM's `generate`.

    Greedy unless `do_sample` (softmax at `temperature`, restricted to the `top_k` most likely
    tokens and to the smallest set reaching `top_p`); `seed` makes sampling reproducible without
    touching the global random state. A row ends at any of `eos_token_id` (default: the LLM's
    generation config's, else its config's, else the tokenizer's; `[]` for none) or when its
    text ends with one of the template's `stop_strings` or the given ones. `streamer` receives
    the new tokens as they come (a transformers streamer; see `ReplyStreamer`). Runs in eval
    mode; every module's training flag is restored afterwards.
    """
    _check_options(max_new_tokens, do_sample, temperature, top_p, num_beams)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got {tuple(input_ids.shape)}")
    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise ValueError(
            "Every prompt must end at the last column: pad the batch on the left "
            "(processor(..., generation=True) does), "
            f"got attention_mask ending in {attention_mask[:, -1].tolist()}"
        )
    from transformers import GenerationConfig

    stops = _stop_strings(model, stop_strings)
    eos_ids = _eos_ids(model, eos_token_id)
    pad = pad_token_id(model)
    if num_beams > 1 and not eos_ids:
        raise ValueError(
            "Beam search needs an end-of-sequence token to rank finished beams: give "
            "eos_token_id, or generate with num_beams=1"
        )
    device = model.device
    input_ids = input_ids.to(device)
    attention_mask = (
        torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=top_k if do_sample else None,
        top_p=top_p if do_sample else None,
        repetition_penalty=repetition_penalty,
        num_beams=num_beams,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad,
        stop_strings=list(stops) or None,
    )
    with _eval_mode(model), _seeded(seed, device):
        embedded = model.embed_inputs(
            input_ids, _to_device(pixel_values, device), attention_mask, normalized=normalized
        )
        # the ids go along for what works on ids (repetition penalty); image positions hold
        # the pad id, since the image-token id need not be in the vocabulary
        text_ids = input_ids.masked_fill(embedded.sequence.image_mask, pad)
        generated = model.llm.generate(
            input_ids=text_ids,
            inputs_embeds=embedded.inputs_embeds,
            attention_mask=attention_mask,
            generation_config=config,
            tokenizer=model.tokenizer if stops else None,
            streamer=streamer,
        )
    new_tokens = generated[:, input_ids.shape[1] :].cpu()
    return _finish(new_tokens, model.tokenizer, eos_ids, stops, pad, device)


def _check_options(
    max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, num_beams: int
) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not do_sample:
        return
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 when sampling (do_sample=True), got {temperature}; "
            "use do_sample=False for greedy decoding"
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _stop_strings(model: SphinxModel, given: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(given, str):
        given = [given]
    if given and model.tokenizer is None:
        raise ValueError(f"stop_strings {list(given)} need a tokenizer; this model has none")
    if model.tokenizer is None:
        return ()
    from_template = model.processor.stop_strings
    return tuple(dict.fromkeys(s for s in (*from_template, *(given or ())) if s))


def _eos_ids(model: SphinxModel, given: int | Sequence[int] | None) -> frozenset[int]:
    """The given ids, else the LLM's generation config's (Llama-3-Instruct lists its end-of-turn
    token there only), else its config's, else the tokenizer's."""
    for source in (getattr(model.llm, "generation_config", None), model.llm.config):
        if given is None:
            given = getattr(source, "eos_token_id", None)
    if given is None and model.tokenizer is not None:
        given = model.tokenizer.eos_token_id
    if given is None:
        return frozenset()
    return frozenset([int(given)] if isinstance(given, int) else map(int, given))


def pad_token_id(model: SphinxModel) -> int:
    """The id finished rows are padded with: the processor's, else the LLM config's, else 0."""
    if model.processor is not None and model.tokenizer is not None:
        return model.processor.pad_token_id
    pad = getattr(model.llm.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def _to_device(pixel_values: Pixels | None, device: torch.device) -> Pixels | None:
    if pixel_values is None:
        return None
    if isinstance(pixel_values, torch.Tensor):
        return pixel_values.to(device)
    return [views.to(device) for views in pixel_values]


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration; each module's own flag is restored (frozen encoders stay in
    eval while the rest trains, so one `model.train(flag)` would not give the state back)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """The global random state seeded for the duration and restored afterwards (transformers
    samples from it)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _finish(
    tokens: torch.Tensor,
    tokenizer: Any,
    eos_ids: frozenset[int],
    stops: tuple[str, ...],
    pad: int,
    device: torch.device,
) -> GenerationOutput:
    """Where and why each row ended: at its first EOS, at the token that completes a stop
    string, or at the length limit; the tokens after that become the pad id."""
    window = 8 + 4 * max((len(stop) for stop in stops), default=0)
    lengths, reasons, texts = [], [], []
    rows = tokens.tolist()
    for row in rows:
        length, reason = len(row), "length"
        for position, token in enumerate(row):
            if token in eos_ids:
                length, reason = position + 1, "eos"
                break
            if stops:
                recent = row[max(0, position + 1 - window) : position + 1]
                if _stop_at(tokenizer.decode(recent, skip_special_tokens=True), stops) is not None:
                    length, reason = position + 1, "stop"
                    break
        lengths.append(length)
        reasons.append(reason)
        if tokenizer is not None:
            text = tokenizer.decode(row[:length], skip_special_tokens=True)
            cut = _stop_at(text, stops)
            texts.append(text if cut is None else text[:cut])
    longest = max(lengths, default=0)
    sequences = torch.full((len(rows), longest), pad, dtype=torch.long)
    for index, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        sequences[index, :length] = torch.tensor(row[:length], dtype=torch.long)
    return GenerationOutput(
        sequences=sequences.to(device),
        lengths=torch.tensor(lengths, dtype=torch.long, device=device),
        finished_by=reasons,
        texts=texts if tokenizer is not None else None,
    )


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(found) if found else None


class ReplyStreamer:
    """A transformers streamer that hands each new piece of one reply's text to `write` as it
    is generated, holding back what may be the start of a stop string and never writing the
    stop string itself (`chat` prints with it)."""

    def __init__(self, processor: SphinxProcessor, write, stop_strings: Sequence[str] = ()):
        self.tokenizer = processor.tokenizer
        self.write = write
        self.stops = tuple(dict.fromkeys((*processor.stop_strings, *stop_strings)))
        self.tokens: list[int] = []
        self.written = 0
        self.prompt_seen = False
        self.stopped = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        if value.ndim > 1 and value.shape[0] != 1:
            raise ValueError("ReplyStreamer streams one reply: generate one prompt at a time")
        self.tokens += value.flatten().tolist()
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, *, final: bool) -> None:
        if self.stopped:
            return
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = _stop_at(text, self.stops)
        if cut is not None:
            text, self.stopped = text[:cut], True
        elif not final:
            # a stop string may be starting at the end, and a character may be incomplete
            hold = max((len(stop) - 1 for stop in self.stops), default=0)
            text = text[: len(text) - hold] if hold else text
            text = text.rstrip("\ufffd")
        if len(text) > self.written:
            self.write(text[self.written :])
            self.written = len(text)


# -- questions -----------------------------------------------------------------------------------


def answer(
    model: SphinxModel,
    images: Sequence[Image.Image] | None,
    questions: Sequence[str],
    *,
    batch_size: int = 8,
    **options: Any,
) -> list[str]:
    """One reply per question (about the image at the same index; `images=None` for text only),
    generated `batch_size` at a time with `generate(**options)`; surrounding spaces stripped."""
    if images is not None and len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions: give one each")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    processor = _processor(model)
    replies: list[str] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        conversations = [[{"from": "human", "value": question}] for question in batch]
        rows = (
            [[] for _ in batch]
            if images is None
            else [[image] for image in images[start : start + len(batch)]]
        )
        inputs = processor(conversations, rows, generation=True)
        output = generate(model, **inputs, **options)
        replies += [text.strip() for text in output.texts or ()]
    return replies


def _processor(model: SphinxModel) -> SphinxProcessor:
    if model.processor is None:
        raise ValueError(
            "This model has no processor (it was assembled from parts by hand): build it with "
            "build_model(config, components=...) or pass one as SphinxModel(..., processor=...)"
        )
    return model.processor
