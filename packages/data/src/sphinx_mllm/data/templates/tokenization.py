"""One small interface over any tokenizer, found by duck typing (no tokenizer library imported).

Recognised, in this order: an object that already implements `TextTokenizer`; a
`sentencepiece.SentencePieceProcessor` (`piece_to_id`, `id_to_piece`, `bos_id()`); a Hugging Face
tokenizer (`convert_tokens_to_ids`, `bos_token_id`); a `tokenizers.Tokenizer` (`token_to_id`,
`encode(...)` returning an Encoding with `.ids`), which knows no BOS/EOS, so name them.

Rendering tokenises a conversation piece by piece and needs every piece to tokenise as it reads
*in place*. Two things get in the way:

- A dummy prefix. SentencePiece (and Metaspace or `add_prefix_space` tokenizers) encode "Human"
  as "▁Human", a word after a space; decoding drops that space only at the very start of a
  sequence. A piece in the middle of a sequence is therefore encoded behind an anchor, `"\\n"`
  (a byte-fallback token in LLaMA vocabularies, so it merges with nothing): encode
  `anchor + text`, check the anchor's own ids are a prefix of the result, and keep the rest.
  Decoding mirrors it. Whether a tokenizer needs this is probed once: does `encode("x")` twice
  decode to "xx"? Only the first text piece of a sequence is encoded plainly, with the prefix,
  as the tokenizer would encode a whole prompt.
- Merges across piece boundaries. A boundary is a token boundary by construction; each piece is
  checked to decode back to exactly its text, and the whole sequence to the whole text
  (rendering does both), so a vocabulary that cannot split there fails loudly instead of
  mislabelling.

`TokenizerAdapter` also encodes and decodes many texts at once (`encode_many`, `decode_many`,
`round_trip_many`) with the tokenizer's own batch calls where it has them: the same results as
the one-text methods, for `render_batch`.

Template strings such as `<|im_start|>` become one id only where the tokenizer has them as a
control token (SentencePiece control piece, added special token); message text is never read for
special tokens, and text that the tokenizer itself turns into one is refused by rendering.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

_ANCHORS = ("\n", ".", "!", "a")
_PROBE = "x"


class TokenizationError(ValueError):
    """A text that this tokenizer cannot encode as a piece of a longer sequence."""


@runtime_checkable
class TextTokenizer(Protocol):
    """What rendering needs from a tokenizer."""

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    def encode_text(self, text: str, *, sequence_start: bool) -> list[int]:
        """Ids of `text` as it reads at the start of a sequence or in the middle of one."""
        ...

    def decode_text(self, ids: Sequence[int], *, sequence_start: bool) -> str:
        """The inverse of `encode_text` for ids holding no special token."""
        ...

    def special_token_id(self, text: str) -> int | None:
        """The control token spelt `text`, or None where the tokenizer has none."""
        ...

    def is_special(self, token_id: int) -> bool:
        """Whether the id is a control token (BOS, EOS, added special tokens)."""
        ...

    def token_text(self, token_id: int) -> str:
        """How a special token is written, e.g. `"</s>"`."""
        ...


class _SentencePieceBackend:
    # Decoding maps each id to its piece and joins them: nothing depends on the neighbouring ids
    # except the dummy-prefix space dropped at the start of a sequence, which the anchors handle,
    # and byte pieces, which a piece checked to decode to its own text holds whole characters of.
    piecewise_decoding = True
    # The encoder never emits a control piece (SentencePiece matches only normal and
    # user-defined pieces in text), and the control pieces are exactly `special_ids`.
    text_makes_special = False

    def __init__(self, processor: Any) -> None:
        self._sp = processor
        self.bos_id = _valid_id(processor.bos_id())
        self.eos_id = _valid_id(processor.eos_id())
        # Control pieces (BOS, EOS, and any a model adds) are never produced from text.
        self.special_ids = {i for i in range(processor.get_piece_size()) if processor.is_control(i)}

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def decode_many(self, id_lists: list[list[int]]) -> list[str]:
        return self._sp.decode(id_lists)

    def token_text(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def single_token_id(self, text: str) -> int | None:
        token_id = self._sp.piece_to_id(text)
        unknown = token_id == self._sp.unk_id()
        return token_id if not unknown and self._sp.id_to_piece(token_id) == text else None


class _HuggingFaceBackend:
    piecewise_decoding = False  # decoders such as WordPiece's or Metaspace's look at neighbours
    text_makes_special = True  # added special tokens are matched in text

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.special_ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
        self.special_ids |= {i for i in (self.bos_id, self.eos_id) if i is not None}
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self.special_ids |= {i for i, token in added.items() if getattr(token, "special", False)}

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        # No clean-up: it rewrites " ." to "." and would break the round trip.
        return self._tok.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        if not callable(self._tok):
            return [self.encode(text) for text in texts]
        encoded = self._tok(texts, add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]

    def decode_many(self, id_lists: list[list[int]]) -> list[str]:
        if not hasattr(self._tok, "batch_decode"):
            return [self.decode(ids) for ids in id_lists]
        return list(
            self._tok.batch_decode(
                id_lists, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def token_text(self, token_id: int) -> str:
        return self._tok.convert_ids_to_tokens(token_id)

    def single_token_id(self, text: str) -> int | None:
        token_id = self._tok.convert_tokens_to_ids(text)
        unknown = getattr(self._tok, "unk_token_id", None)
        if token_id is None or (token_id == unknown and text != self._tok.unk_token):
            return None
        return token_id


class _TokenizersBackend:
    piecewise_decoding = False
    text_makes_special = True  # added special tokens are matched in text

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.bos_id: int | None = None  # a tokenizers.Tokenizer does not know which they are
        self.eos_id: int | None = None
        added = getattr(tokenizer, "get_added_tokens_decoder", dict)()
        self.special_ids = {i for i, token in added.items() if getattr(token, "special", False)}

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        if not hasattr(self._tok, "encode_batch"):
            return [self.encode(text) for text in texts]
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        return [list(encoding.ids) for encoding in encodings]

    def decode_many(self, id_lists: list[list[int]]) -> list[str]:
        if not hasattr(self._tok, "decode_batch"):
            return [self.decode(ids) for ids in id_lists]
        return list(self._tok.decode_batch(id_lists, skip_special_tokens=False))

    def token_text(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id)

    def single_token_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)


def _valid_id(token_id: int) -> int | None:
    return token_id if token_id is not None and token_id >= 0 else None


class TokenizerAdapter:
    """`TextTokenizer` over a raw backend; see the module docstring for the dummy prefix."""

    def __init__(self, backend: Any, name: str) -> None:
        self._backend = backend
        self.name = name
        probe = backend.encode(_PROBE)
        self.adds_prefix_space = backend.decode(probe + probe) != _PROBE + _PROBE
        self._anchors = [(anchor, backend.encode(anchor)) for anchor in _ANCHORS]
        self._decoded_anchor = backend.decode(self._anchors[0][1])

    def __repr__(self) -> str:
        return f"TokenizerAdapter({self.name}, adds_prefix_space={self.adds_prefix_space})"

    @property
    def bos_id(self) -> int | None:
        return self._backend.bos_id

    @property
    def piecewise_decoding(self) -> bool:
        """Whether decoding a sequence gives the decoded texts of its parts joined, once each
        part decodes to its own text (see `rendering`: the whole-sequence check is then
        redundant and skipped)."""
        return self._backend.piecewise_decoding

    @property
    def text_makes_special(self) -> bool:
        """Whether encoding text can give a special id at all (False for SentencePiece, which
        never emits its control pieces): where it cannot, a batch skips looking for them."""
        return getattr(self._backend, "text_makes_special", True)

    @property
    def eos_id(self) -> int | None:
        return self._backend.eos_id

    def encode_text(self, text: str, *, sequence_start: bool) -> list[int]:
        if not text:
            return []
        if sequence_start or not self.adds_prefix_space:
            return self._backend.encode(text)
        for anchor, anchor_ids in self._anchors:
            ids = self._backend.encode(anchor + text)
            if ids[: len(anchor_ids)] != anchor_ids:
                continue  # the anchor merged with the text; try the next one
            rest = ids[len(anchor_ids) :]
            if self._backend.decode(anchor_ids + rest) == self._backend.decode(anchor_ids) + text:
                return rest
        raise TokenizationError(
            f"{self.name} cannot encode {text[:40]!r} as the middle of a sequence: behind each "
            f"anchor in {_ANCHORS}, it merged with the anchor or did not decode back to itself"
        )

    def decode_text(self, ids: Sequence[int], *, sequence_start: bool) -> str:
        ids = list(ids)
        if not ids:
            return ""
        if sequence_start or not self.adds_prefix_space:
            return self._backend.decode(ids)
        anchor, anchor_ids = self._anchors[0]
        decoded_anchor = self._backend.decode(anchor_ids)
        decoded = self._backend.decode(anchor_ids + ids)
        if not decoded.startswith(decoded_anchor):
            raise TokenizationError(f"{self.name} decoded {anchor!r} + ids as {decoded!r}")
        return decoded[len(decoded_anchor) :]

    def encode_many(self, texts: Sequence[str], *, sequence_start: bool) -> list[list[int]]:
        """`encode_text` of each text (the same ids, the same error for the first text that
        fails), in one batched call of the tokenizer where it has one."""
        return self.round_trip_many(texts, sequence_start=sequence_start)[0]

    def round_trip_many(
        self, texts: Sequence[str], *, sequence_start: bool
    ) -> tuple[list[list[int]], list[str]]:
        """`encode_text` of each text, and `decode_text` of those ids, in one batched encode and
        one batched decode. In the middle of a sequence a text is encoded behind the first
        anchor, and the decode that checks it is the one `decode_text` does; a text that merges
        with that anchor or does not decode back goes through `encode_text`, which tries the
        others (and raises, for the first text that none carries)."""
        if sequence_start or not self.adds_prefix_space:
            encoded = self._encode_filled(texts)
            return encoded, self.decode_many(encoded, sequence_start=sequence_start)
        anchor, anchor_ids = self._anchors[0]
        size, decoded_anchor = len(anchor_ids), self._decoded_anchor
        encoded = self._encode_filled([anchor + text if text else "" for text in texts])
        decoded = self.decode_many(encoded, sequence_start=True)
        ids_out: list[list[int]] = []
        texts_out: list[str] = []
        for text, ids, back in zip(texts, encoded, decoded, strict=True):
            if not text:
                ids_out.append([])
                texts_out.append("")
            elif ids[:size] == anchor_ids and back == decoded_anchor + text:
                ids_out.append(ids[size:])
                texts_out.append(text)
            else:
                ids = self.encode_text(text, sequence_start=False)
                ids_out.append(ids)
                texts_out.append(self.decode_text(ids, sequence_start=False))
        return ids_out, texts_out

    def _encode_filled(self, texts: Sequence[str]) -> list[list[int]]:
        """The backend's ids of each text in one batched call; none for an empty text (and no
        call at all for no text: some backends, e.g. transformers' fast ones, fail on [])."""
        if texts and all(texts):
            return self._backend.encode_many(list(texts))
        result: list[list[int]] = [[] for _ in texts]
        filled = [index for index, text in enumerate(texts) if text]
        encoded = self._backend.encode_many([texts[index] for index in filled]) if filled else []
        for index, ids in zip(filled, encoded, strict=True):
            result[index] = ids
        return result

    def decode_many(self, id_lists: Sequence[Sequence[int]], *, sequence_start: bool) -> list[str]:
        """`decode_text` of each id list (the same texts, the same error for the first that
        fails), in one batched call of the tokenizer where it has one."""
        plain = sequence_start or not self.adds_prefix_space
        if plain and id_lists and all(id_lists):
            return self._backend.decode_many(
                [ids if type(ids) is list else list(ids) for ids in id_lists]
            )
        filled = [index for index, ids in enumerate(id_lists) if ids]
        if not filled:
            return ["" for _ in id_lists]
        anchor, anchor_ids = self._anchors[0]
        batch = [
            list(id_lists[index]) if plain else [*anchor_ids, *id_lists[index]] for index in filled
        ]
        result = ["" for _ in id_lists]
        decoded_anchor = self._decoded_anchor
        for index, text in zip(filled, self._backend.decode_many(batch), strict=True):
            if plain:
                result[index] = text
            elif text.startswith(decoded_anchor):
                result[index] = text[len(decoded_anchor) :]
            else:
                raise TokenizationError(f"{self.name} decoded {anchor!r} + ids as {text!r}")
        return result

    def has_special(self, ids: Iterable[int]) -> bool:
        """Whether any of the ids is a control token: `is_special` over a whole list at once."""
        return not self._backend.special_ids.isdisjoint(ids)

    def special_token_id(self, text: str) -> int | None:
        # Only a control token: an ordinary vocabulary entry that happens to spell `text` is
        # left to the tokenizer, which produces it from the text where it fits.
        token_id = self._backend.single_token_id(text)
        return token_id if token_id in self._backend.special_ids else None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._backend.special_ids

    def token_text(self, token_id: int) -> str:
        return self._backend.token_text(token_id)


def decode(
    tokenizer: TextTokenizer, ids: Sequence[int | str], *, sequence_start: bool = True
) -> str:
    """Any ids as text: special tokens as they are spelt, `str` items as they are, and the runs
    of other ids by `decode_text`, only the first run read as the start of a sequence (as
    rendering encodes them)."""
    pieces: list[str] = []
    run: list[int] = []
    first_run = sequence_start
    for item in [*ids, ""]:
        if isinstance(item, int) and not tokenizer.is_special(item):
            run.append(item)
            continue
        if run:
            pieces.append(tokenizer.decode_text(run, sequence_start=first_run))
            run, first_run = [], False
        pieces.append(item if isinstance(item, str) else tokenizer.token_text(item))
    return "".join(pieces)


def as_text_tokenizer(
    tokenizer: Any, *, bos_token: str | None = None, eos_token: str | None = None
) -> TextTokenizer:
    """Wrap any supported tokenizer (see the module docstring); a `TextTokenizer` is returned
    as is. `bos_token` / `eos_token` name those tokens: needed for a `tokenizers.Tokenizer`,
    which does not know them, and an override for the others. Wrap once and reuse the result:
    wrapping probes the tokenizer."""
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    kind = type(tokenizer).__name__
    backend: _SentencePieceBackend | _HuggingFaceBackend | _TokenizersBackend
    if _has(tokenizer, "piece_to_id", "id_to_piece", "bos_id"):
        backend, family = _SentencePieceBackend(tokenizer), "SentencePiece"
    elif _has(tokenizer, "convert_tokens_to_ids", "encode", "decode") and hasattr(
        tokenizer, "bos_token_id"
    ):
        backend, family = _HuggingFaceBackend(tokenizer), "Hugging Face"
    elif _has(tokenizer, "token_to_id", "id_to_token", "encode", "decode"):
        backend, family = _TokenizersBackend(tokenizer), "tokenizers"
    else:
        raise TypeError(
            f"Unsupported tokenizer {kind}: expected a Hugging Face tokenizer, a "
            "tokenizers.Tokenizer, a sentencepiece.SentencePieceProcessor or a TextTokenizer"
        )
    for token, attribute in ((bos_token, "bos_id"), (eos_token, "eos_id")):
        if token is not None:
            token_id = backend.single_token_id(token)
            if token_id is None:
                raise ValueError(f"{token!r} is not one token of this {family} tokenizer")
            setattr(backend, attribute, token_id)
            backend.special_ids.add(token_id)
    return TokenizerAdapter(backend, f"{family} ({kind})")


def _has(obj: Any, *names: str) -> bool:
    return all(callable(getattr(obj, name, None)) for name in names)
