"""`SphinxProcessor`: conversations and images in, the tensors `SphinxModel` takes out.

It owns the text and image side of a model, and is the one place that decides where visual
tokens go: the tokenizer, the chat template, the view splitter (an image becomes views in
[0, 1]; each encoder normalises them with its own statistics inside the model), the image token
and how many visual tokens each view gives, and the placement rule. Training, evaluation,
generation and chat all call it, so a generation prompt is the training sequence up to the
answer, token for token.

```python
processor = model.processor                   # or SphinxProcessor.from_pretrained(checkpoint)
batch = processor([conversation], images=[[photo]])            # training: labels on replies
prompt = processor([question_turns], images=[[photo]], generation=True)   # left padded
output = model(**batch)                                        # output.loss, output.logits
```

Placement. The processor writes every image as a run of the image-token id, one per visual
token (Hugging Face LLaVA's form), so the model only overwrites those positions:
- `placeholder`: each `<image>` of the user messages is one image, or the template's image slot
  places the images when the messages hold none;
- `prefix` (SPHINX): every image goes right after the template's leading BOS, and `<image>` is
  deleted from the messages, each message then stripped of surrounding whitespace (as
  LLaMA2-Accessory's `ConversationGenerator` does);
- `after_question`: each user message's images follow its text (`<image>` moved to the end of
  its message, after a newline; into the first user message when none holds one), so under
  causal attention every visual token sees the question, as an instruction-aware Q-Former's
  queries do (InstructBLIP). LLaVA's own data has both orders; this makes one of them the rule,
  for training and inference alike.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sphinx_mllm.data.templates import (
    IGNORE_INDEX,
    ChatTemplate,
    ImageSlot,
    RenderedSample,
    render,
    render_batch,
)
from sphinx_mllm.pipeline.config import PLACEMENTS
from sphinx_mllm.pipeline.hf_config import HUB_OPTIONS

PROCESSOR_FILE = "processor_config.json"
LEGACY_TOKENIZER_DIR = "tokenizer"  # where format-1 checkpoints keep the tokenizer
PROCESSOR_FORMAT = 1

Conversation = Sequence[Mapping[str, Any]]


@dataclass
class ModelInputs(Mapping[str, Any]):
    """What `SphinxModel.forward` and `generate` take: ids with each image's run of image-token
    ids, the attention mask, the labels (None for generation prompts) and each image's views
    `[V, 3, s, s]` in reading order. `model(**inputs)` passes the model's arguments;
    `images_per_row` says which images belong to which row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    pixel_values: list[torch.Tensor] | None
    images_per_row: list[int]

    _ARGUMENTS = ("input_ids", "attention_mask", "labels", "pixel_values")

    def __getitem__(self, key: str) -> Any:
        if key not in self._ARGUMENTS or getattr(self, key) is None:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._ARGUMENTS if getattr(self, key) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def to(self, device: torch.device | str) -> ModelInputs:
        pixels = None if self.pixel_values is None else [v.to(device) for v in self.pixel_values]
        return ModelInputs(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            None if self.labels is None else self.labels.to(device),
            pixels,
            list(self.images_per_row),
        )


class SphinxProcessor:
    """The text and image side of a `SphinxModel` (see the module docstring).

    `tokens_per_view` maps each view kind (`global`, `tile`) to the visual tokens it gives;
    `splitter_spec` is the splitter's registry name and options, which `save_pretrained` needs.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: ChatTemplate,
        splitter: Any,
        *,
        tokens_per_view: Mapping[str, int],
        image_token_id: int,
        placement: str = "placeholder",
        splitter_spec: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if not isinstance(template, ChatTemplate):
            raise TypeError(f"template must be a ChatTemplate, got {type(template).__name__}")
        missing = [kind for kind in ("global", "tile") if kind not in tokens_per_view]
        if missing or any(int(count) < 1 for count in tokens_per_view.values()):
            raise ValueError(
                "tokens_per_view must give a positive token count for the 'global' and 'tile' "
                f"views, got {dict(tokens_per_view)}"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.splitter = splitter
        self.tokens_per_view = {kind: int(count) for kind, count in tokens_per_view.items()}
        self.image_token_id = int(image_token_id)
        self.placement = placement
        self.splitter_spec = splitter_spec
        # prefix placement: images right after BOS, whatever slot the template names
        self._render_template = (
            dataclasses.replace(template, image_slot=ImageSlot.AFTER_BOS)
            if placement == "prefix"
            else template
        )

    # -- what it declares ------------------------------------------------------------------------

    @property
    def image_text(self) -> str:
        return self.template.image_text

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.template.stop_strings)

    @property
    def pad_token_id(self) -> int:
        pad = None if self.tokenizer is None else self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    def num_visual_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Visual tokens of an image of (width, height) `image_size` (default: a square)."""
        side = self.splitter.base_size
        kinds = self.splitter.layout(image_size or (side, side)).kinds
        return sum(self.tokens_per_view[kind] for kind in kinds)

    def tokens_for_views(self, views: torch.Tensor) -> int:
        """Visual tokens of an image given as its views `[V, 3, s, s]` (global view first)."""
        return self.tokens_per_view["global"] + (views.shape[0] - 1) * self.tokens_per_view["tile"]

    # -- images ----------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image -> its views `[V, 3, s, s]` in [0, 1] (global view first)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"Expected a PIL image, got {type(image).__name__}")
        return self.splitter.split(image.convert("RGB"))[0]

    # -- text ------------------------------------------------------------------------------------

    def messages(
        self, conversation: Conversation, *, generation: bool = False, num_images: int = 0
    ) -> list[dict]:
        """The messages as the template renders them: `<image>` deleted under prefix placement,
        moved after the text under after_question placement (`num_images` of them into the first
        user message when none holds one), and an empty assistant turn appended for a generation
        prompt."""
        messages = [dict(message) for message in conversation]
        if self.placement == "prefix":
            messages = [self._without_image_text(message) for message in messages]
        elif self.placement == "after_question":
            messages = self._images_after_text(messages, num_images)
        if generation and not (messages and _asks_for_reply(messages[-1])):
            messages.append({"from": "gpt", "value": None})
        return messages

    def render(
        self,
        conversation: Conversation,
        *,
        num_images: int,
        generation: bool = False,
        sample_id: str = "<no id>",
    ) -> RenderedSample:
        """One conversation as ids and labels, each image as ONE image-token id (`expand` makes
        it the image's run of visual tokens). `generation=True` renders the prompt for the next
        reply of a conversation that ends with a user message."""
        self._need_tokenizer()
        return render(
            self._render_template,
            self.messages(conversation, generation=generation, num_images=num_images),
            self.tokenizer,
            image_token=self.image_token_id,
            image_token_count=1,
            num_images=num_images,
            sample_id=sample_id,
        )

    def render_batch(
        self,
        conversations: Sequence[Conversation],
        *,
        num_images: Sequence[int],
        sample_ids: Sequence[str] | None = None,
    ) -> list[RenderedSample]:
        """`render` of many training conversations, tokenised in batches."""
        self._need_tokenizer()
        return render_batch(
            self._render_template,
            [
                self.messages(conversation, num_images=count)
                for conversation, count in zip(conversations, num_images, strict=True)
            ],
            self.tokenizer,
            image_token=self.image_token_id,
            image_token_count=1,
            num_images=list(num_images),
            sample_ids=sample_ids,
        )

    def expand(
        self, input_ids: Sequence[int], labels: Sequence[int] | None, counts: Sequence[int]
    ) -> tuple[list[int], list[int] | None]:
        """Each image-token id of a rendered sample becomes `counts[i]` of them (the i-th image's
        visual tokens), their labels ignored."""
        image_id = self.image_token_id
        found = sum(1 for token in input_ids if token == image_id)
        if found != len(counts):
            raise ValueError(
                f"The sample holds {found} image placeholder(s) (id {image_id}) for "
                f"{len(counts)} image(s)"
            )
        ids: list[int] = []
        new_labels: list[int] | None = None if labels is None else []
        remaining = iter(counts)
        for position, token in enumerate(input_ids):
            if token == image_id:
                count = next(remaining)
                ids += [image_id] * count
                if new_labels is not None:
                    new_labels += [IGNORE_INDEX] * count
                continue
            ids.append(token)
            if new_labels is not None:
                new_labels.append(labels[position])
        return ids, new_labels

    # -- batches ---------------------------------------------------------------------------------

    def collate(
        self,
        samples: Sequence[tuple[Sequence[int], Sequence[int] | None]],
        views: Sequence[Sequence[torch.Tensor]],
        *,
        padding_side: str = "right",
    ) -> ModelInputs:
        """Rendered samples `(input_ids, labels)` (labels None for prompts) and the views of each
        sample's images -> padded tensors, each image expanded to its visual tokens."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if len(samples) != len(views):
            raise ValueError(f"{len(samples)} samples but views for {len(views)}")
        if not samples:
            raise ValueError("collate needs at least one sample")
        rows = []
        for (ids, labels), image_views in zip(samples, views, strict=True):
            counts = [self.tokens_for_views(v) for v in image_views]
            rows.append(self.expand(ids, labels, counts))
        with_labels = rows[0][1] is not None
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, (ids, row_labels) in enumerate(rows):
            span = slice(length - len(ids), length) if padding_side == "left" else slice(len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            mask[row, span] = 1
            if row_labels is not None:
                labels[row, span] = torch.tensor(row_labels, dtype=torch.long)
        pixels = [v for image_views in views for v in image_views]
        return ModelInputs(
            input_ids,
            mask,
            labels if with_labels else None,
            pixels or None,
            [len(image_views) for image_views in views],
        )

    def __call__(
        self,
        conversations: Sequence[Conversation],
        images: Sequence[Sequence[Image.Image]] | None = None,
        *,
        generation: bool = False,
        padding_side: str | None = None,
    ) -> ModelInputs:
        """Conversations (LLaVA or OpenAI-style messages) and each one's images -> model inputs.
        Training inputs carry labels and pad on the right; `generation=True` renders the prompt
        for the next reply, without labels, padded on the left."""
        if isinstance(conversations, Mapping) or (
            conversations and isinstance(conversations[0], Mapping)
        ):
            raise TypeError("conversations must be a list of conversations (lists of messages)")
        if images is None:
            images = [[] for _ in conversations]
        if len(images) != len(conversations):
            raise ValueError(
                f"{len(images)} image lists for {len(conversations)} conversations: give one "
                "list (maybe empty) per conversation"
            )
        views = [[self.preprocess(image) for image in row] for row in images]
        samples = []
        for index, (conversation, row) in enumerate(zip(conversations, views, strict=True)):
            sample = self.render(
                conversation, num_images=len(row), generation=generation, sample_id=str(index)
            )
            samples.append((sample.input_ids, None if generation else sample.labels))
        side = padding_side or ("left" if generation else "right")
        return self.collate(samples, views, padding_side=side)

    def decode(self, token_ids: Sequence[int] | torch.Tensor, **options: Any) -> str:
        self._need_tokenizer()
        options.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(token_ids, **options)

    def batch_decode(self, sequences: Any, **options: Any) -> list[str]:
        return [self.decode(ids, **options) for ids in sequences]

    # -- persistence -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tokenizer, as plain data (the template in full, so a custom
        template survives a save)."""
        if self.splitter_spec is None:
            raise ValueError(
                "This processor's view splitter was given as an object, with no registry name "
                "and options (splitter_spec), so it cannot be saved; build the processor from a "
                "ModelConfig or pass splitter_spec=(name, options)"
            )
        name, options = self.splitter_spec
        template = dataclasses.asdict(self.template)
        template["image_slot"] = self.template.image_slot.value
        return {
            "format_version": PROCESSOR_FORMAT,
            "processor_class": type(self).__name__,
            "placement": self.placement,
            "image_token_id": self.image_token_id,
            "tokens_per_view": dict(self.tokens_per_view),
            "splitter": {"name": name, "options": dict(options)},
            "template": template,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """`processor_config.json` and the tokenizer's files into `directory` (the Hugging Face
        layout: `AutoTokenizer.from_pretrained(directory)` reads the tokenizer)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        (directory / PROCESSOR_FILE).write_text(text)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, tokenizer: Any = None, **options: Any
    ) -> SphinxProcessor:
        """The processor `save_pretrained` wrote (a model checkpoint holds one; also what
        `AutoProcessor.from_pretrained` gives, whose hub options are refused by name: only
        local directories are read)."""
        unknown = sorted(set(options) - HUB_OPTIONS)
        if unknown:
            raise TypeError(
                f"SphinxProcessor.from_pretrained reads a local directory; it takes no {unknown}"
            )
        directory = Path(directory).expanduser()
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No {PROCESSOR_FILE} in {directory}")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if tokenizer is None:
            tokenizer = saved_tokenizer(directory)
        return cls.from_dict(data, tokenizer=tokenizer, where=str(path))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, tokenizer: Any = None, where: str = "processor config"
    ) -> SphinxProcessor:
        from sphinx_mllm.mixer.registry import get_view_splitter

        if not isinstance(data, Mapping) or data.get("format_version") != PROCESSOR_FORMAT:
            version = data.get("format_version") if isinstance(data, Mapping) else None
            raise ValueError(
                f"{where}: format_version {version!r}, this sphinx-pipeline reads "
                f"{PROCESSOR_FORMAT}"
            )
        try:
            splitter = data["splitter"]
            template = dict(data["template"])
            template["image_slot"] = ImageSlot(template["image_slot"])
            for key in ("special_tokens", "stop_strings"):
                template[key] = tuple(template[key])
            return cls(
                tokenizer,
                ChatTemplate(**template),
                get_view_splitter(splitter["name"])(**splitter["options"]),
                tokens_per_view=data["tokens_per_view"],
                image_token_id=data["image_token_id"],
                placement=data["placement"],
                splitter_spec=(splitter["name"], splitter["options"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"{where}: not a processor config ({error!r})") from error

    # -- helpers ---------------------------------------------------------------------------------

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise ValueError(
                "This processor has no tokenizer, so it cannot render text; set tokenizer.source "
                "in the model config (e.g. 'demo' or a tokenizer directory)"
            )

    def _images_after_text(self, messages: list[dict], num_images: int) -> list[dict]:
        users = [m for m in messages if m.get("from", m.get("role")) in ("human", "user")]
        users = [m for m in users if isinstance(m.get(_text_key(m)), str)]
        if users and num_images and not any(self.image_text in m[_text_key(m)] for m in users):
            users[0][_text_key(users[0])] += self.image_text * num_images  # moved below
        for message in users:
            key = _text_key(message)
            count = message[key].count(self.image_text)
            if count:
                rest = message[key].replace(self.image_text, "").strip()
                message[key] = "\n".join(([rest] if rest else []) + [self.image_text] * count)
        return messages

    def _without_image_text(self, message: dict[str, Any]) -> dict[str, Any]:
        key = _text_key(message)
        text = message.get(key)
        if isinstance(text, str) and self.image_text in text:
            message[key] = text.replace(self.image_text, "").strip()
        return message

    def __repr__(self) -> str:
        tokenizer = type(self.tokenizer).__name__ if self.tokenizer is not None else None
        return (
            f"SphinxProcessor(template={self.template.name!r}, placement={self.placement!r}, "
            f"image_token_id={self.image_token_id}, tokens_per_view={self.tokens_per_view}, "
            f"tokenizer={tokenizer})"
        )


def saved_tokenizer(directory: Path) -> Any:
    """The tokenizer saved beside the processor (or in `tokenizer/`, format 1), or None."""
    from transformers import AutoTokenizer

    for where in (directory, directory / LEGACY_TOKENIZER_DIR):
        if (where / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(where)
    return None


def _text_key(message: Mapping[str, Any]) -> str:
    return "value" if "value" in message else "content"


def _asks_for_reply(message: Mapping[str, Any]) -> bool:
    role = message.get("from", message.get("role"))
    return role in ("gpt", "assistant") and message.get("value", message.get("content")) is None
