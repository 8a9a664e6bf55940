"""The built-in chat templates, registered by entry points in `sphinx_mllm_chat_templates` (each
entry point names one of these instances).

Where each comes from:
- `sphinx`: LLaMA2-Accessory `accessory/data/conversation/lib.py` (`conv_v1`) and `dataset.py`
  (`DialogGenerator`): system + "\\n\\n###", each turn " " + role + ": " + message + "\\n###";
  the targets are " " + reply + "\\n###" for tokenizers that glue a space to the next word.
- `llama2_chat`: Meta's `llama/generation.py` `chat_completion`: every exchange is
  `<s>[INST] {user} [/INST] {answer} </s>`, the system prompt wrapped in `<<SYS>>` inside the first
  user message. Meta encodes each exchange separately, so its later `[INST]` carry a dummy-prefix
  "▁"; here only the start of the sequence does (see `tokenization`), which keeps the ids
  decoding to the rendered text.
- `vicuna_v1`: LLaVA-1.5's `conv_vicuna_v1` (`SeparatorStyle.TWO`, sep " ", sep2 "</s>").
- `chatml`: OpenAI's ChatML as Qwen writes it; the "\\n" after `<|im_end|>` is no target, since
  generation stops at `<|im_end|>`.
- `plain`: LLaVA's `conv_llava_plain` for caption pre-training: the image, then the caption; the
  instruction text is dropped. The caption ends with EOS here (LLaVA uses "\\n").
"""

from __future__ import annotations

from sphinx_mllm.data.templates.base import ChatTemplate, ImageSlot

SPHINX = ChatTemplate(
    name="sphinx",
    summary="SPHINX / LLaMA2-Accessory conv_v1: ' Human: ...\\n### Assistant: ...\\n###'",
    system_prompt=(
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    ),
    system_template="{system}\n\n###",
    user_template=" Human: {message}\n###",
    assistant_prefix=" Assistant:",
    reply_lead=" ",
    end_marker="\n###",
    add_bos=True,
    image_slot=ImageSlot.AFTER_BOS,
    stop_strings=("\n###",),
)

LLAMA2_CHAT = ChatTemplate(
    name="llama2_chat",
    summary="LLaMA-2-Chat: '<s>[INST] <<SYS>>...<</SYS>> user [/INST] answer </s>'",
    system_template="<<SYS>>\n{system}\n<</SYS>>\n\n",
    system_in_first_user=True,
    user_template="{bos}[INST] {message} [/INST]",
    assistant_prefix="",
    reply_lead=" ",
    end_marker=" {eos}",
)

VICUNA_V1 = ChatTemplate(
    name="vicuna_v1",
    summary="LLaVA-1.5 conv_vicuna_v1: 'USER: ... ASSISTANT: ...</s>'",
    system_prompt=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    system_template="{system} ",
    user_template="USER: {message} ",
    assistant_prefix="ASSISTANT:",
    reply_lead=" ",
    end_marker="{eos}",
    add_bos=True,
)

CHATML = ChatTemplate(
    name="chatml",
    summary="ChatML: '<|im_start|>role\\n...<|im_end|>\\n'",
    system_template="<|im_start|>system\n{system}<|im_end|>\n",
    user_template="<|im_start|>user\n{message}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    end_marker="<|im_end|>",
    turn_separator="\n",
    special_tokens=("<|im_start|>", "<|im_end|>"),
    stop_strings=("<|im_end|>",),
)

PLAIN = ChatTemplate(
    name="plain",
    summary="Caption pre-training (LLaVA plain): the image, then the caption and EOS",
    user_template="{message}",
    assistant_prefix="",
    end_marker="{eos}",
    add_bos=True,
    keep_user_text=False,
)

BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {
    template.name: template for template in (SPHINX, LLAMA2_CHAT, VICUNA_V1, CHATML, PLAIN)
}
