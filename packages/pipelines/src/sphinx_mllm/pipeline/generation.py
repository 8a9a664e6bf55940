"""Text generation for `SphinxModel`: prompts rendered with the model's chat template, one prefill
through `embed_inputs` (visual tokens placed as in training), then one token per step with the
LLM's KV cache; greedy or sampled (temperature, nucleus top-p), each row stopping on its own at
EOS or a stop string.

```python
answer(model, [image], ["What is in the image?"])              # -> ["A cat on a sofa."]

ids, mask = left_pad([build_prompt(model, "Describe it.")], model.pad_token_id)
output = generate(model, ids, [model.preprocess(image)], attention_mask=mask)
output.texts, output.finished_by                               # (["A cat ..."], ["stop"])
```
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from sphinx_mllm.data.templates import render

if TYPE_CHECKING:
    from PIL import Image

    from sphinx_mllm.pipeline.model import Pixels, SphinxModel

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


# -- generation --------------------------------------------------------------------------------


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
    top_p: float = 1.0,
    stop_strings: Sequence[str] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    normalized: bool = False,
) -> GenerationOutput:
    """Continue each row of a left-padded batch of prompts (`left_pad`) by up to `max_new_tokens`.

    Greedy unless `do_sample`, which samples from `softmax(logits / temperature)` restricted to
    the smallest set of tokens whose probability reaches `top_p`, drawing from `generator` (on
    the model's device) for reproducible runs. A row ends at any of `eos_token_id` (default: the
    LLM's) or when its decoded text holds one of the template's `stop_strings` or the
    given ones. Runs in eval mode; every module's training flag is restored afterwards.
    """
    _check_options(max_new_tokens, do_sample, temperature, top_p)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got {tuple(input_ids.shape)}")
    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise ValueError(
            "Every prompt must end at the last column: pad the batch on the left (left_pad), "
            f"got attention_mask ending in {attention_mask[:, -1].tolist()}"
        )
    stops = _stop_strings(model, stop_strings)
    eos_ids = _eos_ids(model, eos_token_id)
    device = model.device
    with _eval_mode(model):
        embedded = model.embed_inputs(
            input_ids.to(device),
            _to_device(pixel_values, device),
            None if attention_mask is None else attention_mask.to(device),
            normalized=normalized,
        )
        sequence = embedded.sequence
        if not bool(sequence.attention_mask[:, -1].all()):
            # Prefix placement pads an unpadded batch on the right when images differ in length.
            raise ValueError(
                "The placed prompts do not all end at the last column (prefix placement of images "
                "with different visual token counts): pad the prompts on the left, or generate "
                "them one by one"
            )
        step = _CachedSteps(model.llm)
        logits = step(
            inputs_embeds=embedded.inputs_embeds,
            attention_mask=sequence.attention_mask,
            position_ids=sequence.position_ids,
        )
        rows = _Rows(input_ids.shape[0], max_new_tokens, model, eos_ids, stops, device)
        mask = sequence.attention_mask
        for position in range(max_new_tokens):
            chosen = choose_next_tokens(
                logits, do_sample=do_sample, temperature=temperature, top_p=top_p,
                generator=generator,
            )  # fmt: skip
            chosen = rows.record(position, chosen)
            if rows.all_finished or position == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            logits = step(
                input_ids=chosen.unsqueeze(1),
                attention_mask=mask,
                position_ids=mask.long().sum(dim=1, keepdim=True) - 1,
            )
    return rows.output()


def choose_next_tokens(
    logits: torch.Tensor,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token of each row from its last logits `[B, vocab]`."""
    if not do_sample:
        return logits.argmax(dim=-1)
    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probabilities = nucleus(probabilities, top_p)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def nucleus(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability reaches `top_p`: a token stays
    when the tokens more probable than it hold less than `top_p`, so the top one always does."""
    ordered, order = probabilities.sort(dim=-1, descending=True)
    mass_before = ordered.cumsum(dim=-1) - ordered
    ordered = ordered.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probabilities).scatter(-1, order, ordered)


def _check_options(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
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
    from_template = tuple(model.template.stop_strings) if model.template is not None else ()
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


class _CachedSteps:
    """Calls the LLM with one growing KV cache and gives the last position's logits. The cache
    argument is `cache` in recent transformers releases and `past_key_values` before."""

    def __init__(self, llm: torch.nn.Module) -> None:
        from transformers import DynamicCache

        self.llm = llm
        parameters = inspect.signature(llm.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.keep_last_only = "logits_to_keep" in parameters
        try:
            self.cache = DynamicCache(config=llm.config)
        except TypeError:
            self.cache = DynamicCache()

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        options: dict[str, Any] = {self.cache_argument: self.cache, "use_cache": True}
        if self.keep_last_only:
            options["logits_to_keep"] = 1
        return self.llm(**inputs, **options).logits[:, -1]


class _Rows:
    """The generated tokens of each row and why it ended."""

    def __init__(
        self,
        batch: int,
        max_new_tokens: int,
        model: SphinxModel,
        eos_ids: frozenset[int],
        stops: tuple[str, ...],
        device: torch.device,
    ) -> None:
        self.pad_id = model.pad_token_id
        self.tokenizer = model.tokenizer
        self.eos_ids = eos_ids
        self.stops = stops
        self.tokens = torch.full((batch, max_new_tokens), self.pad_id, dtype=torch.long)
        self.lengths = [0] * batch
        self.finished_by: list[FinishReason | None] = [None] * batch
        self.device = device
        # A stop string just completed lies in the last few tokens: decoding those is enough.
        self.stop_window = 8 + 4 * max((len(stop) for stop in stops), default=0)

    @property
    def all_finished(self) -> bool:
        return all(reason is not None for reason in self.finished_by)

    def record(self, position: int, chosen: torch.Tensor) -> torch.Tensor:
        """Keep the tokens of rows still running; finished rows get the pad id. Returns the
        tokens to feed next."""
        chosen = chosen.cpu()
        for row, reason in enumerate(self.finished_by):
            if reason is not None:
                chosen[row] = self.pad_id
                continue
            token = int(chosen[row])
            self.tokens[row, position] = token
            self.lengths[row] += 1
            if token in self.eos_ids:
                self.finished_by[row] = "eos"
            elif self.stops and _stop_at(self.text(row, self.stop_window), self.stops) is not None:
                self.finished_by[row] = "stop"
        return chosen.to(self.device)

    def text(self, row: int, last: int | None = None) -> str:
        """The row's text so far, or that of its `last` tokens."""
        end = self.lengths[row]
        start = 0 if last is None else max(0, end - last)
        return self.tokenizer.decode(self.tokens[row, start:end].tolist(), skip_special_tokens=True)

    def output(self) -> GenerationOutput:
        longest = max(self.lengths)
        texts = None
        if self.tokenizer is not None:
            texts = []
            for row in range(len(self.lengths)):
                text = self.text(row)
                cut = _stop_at(text, self.stops)
                texts.append(text if cut is None else text[:cut])
        return GenerationOutput(
            sequences=self.tokens[:, :longest].to(self.device),
            lengths=torch.tensor(self.lengths, dtype=torch.long, device=self.device),
            finished_by=[reason or "length" for reason in self.finished_by],
            texts=texts,
        )


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(found) if found else None


# -- prompts -------------------------------------------------------------------------------------


def render_prompt(
    model: SphinxModel,
    conversation: Sequence[Mapping[str, Any]],
    *,
    image_count: int = 1,
    image_size: tuple[int, int] | None = None,
) -> list[int]:
    """The ids that ask for the next reply of `conversation` (LLaVA-style messages ending with a
    user message) about `image_count` images of (width, height) `image_size`.

    Placeholder placement reserves the model's visual token count per image at each `<image>` of
    the messages, or where the template puts images when there is none. Prefix placement drops
    `<image>` from the messages: the model inserts the visual tokens after BOS itself.
    """
    if model.tokenizer is None or model.template is None:
        raise ValueError("Rendering a prompt needs the model's tokenizer and chat template")
    template = model.template
    messages = [dict(message) for message in conversation]
    if not (messages and _is_generation_slot(messages[-1])):
        messages.append({"from": "gpt", "value": None})
    if model.placement == "prefix":
        if image_count > 1:
            raise ValueError(
                f"Prefix placement takes one image per prompt, got image_count={image_count}"
            )
        messages = [_without_image_text(message, template.image_text) for message in messages]
        sample = render(template, messages, model.tokenizer, num_images=0)
    else:
        sample = render(
            template,
            messages,
            model.tokenizer,
            image_token=model.image_token_id,
            image_token_count=model.num_visual_tokens(image_size),
            num_images=image_count,
        )
    return list(sample.input_ids)


def build_prompt(
    model: SphinxModel,
    question: str,
    image_count: int = 1,
    *,
    image_size: tuple[int, int] | None = None,
) -> list[int]:
    """The ids that ask the model one question about `image_count` images."""
    return render_prompt(
        model, [{"from": "human", "value": question}], image_count=image_count,
        image_size=image_size,
    )  # fmt: skip


def _is_generation_slot(message: Mapping[str, Any]) -> bool:
    role = message.get("from", message.get("role"))
    return role in ("gpt", "assistant") and message.get("value", message.get("content")) is None


def _without_image_text(message: dict[str, Any], image_text: str) -> dict[str, Any]:
    key = "value" if "value" in message else "content"
    text = message.get(key)
    if isinstance(text, str) and image_text in text:
        message[key] = text.replace(image_text + "\n", "").replace(image_text, "").strip()
    return message


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of token id lists padded on the left to the longest."""
    if not sequences or any(len(ids) == 0 for ids in sequences):
        raise ValueError("left_pad needs at least one sequence and no empty sequence")
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, longest - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, longest - len(ids) :] = 1
    return input_ids, attention_mask


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
    replies: list[str] = []
    for start in range(0, len(questions), batch_size):
        batch_questions = questions[start : start + batch_size]
        batch_images = None if images is None else images[start : start + batch_size]
        if batch_images is None:
            prompts = [build_prompt(model, question, 0) for question in batch_questions]
            pixels = None
        else:
            prompts = [
                build_prompt(model, question, 1, image_size=image.size)
                for question, image in zip(batch_questions, batch_images, strict=True)
            ]
            pixels = [model.preprocess(image.convert("RGB")) for image in batch_images]
        input_ids, attention_mask = left_pad(prompts, model.pad_token_id)
        output = generate(model, input_ids, pixels, attention_mask=attention_mask, **options)
        replies += [text.strip() for text in output.texts or ()]
    return replies
