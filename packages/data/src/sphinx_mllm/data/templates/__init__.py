"""Chat templates as data, and rendering a conversation into token ids with loss labels.

```python
from sphinx_mllm.data.templates import SPHINX, render

conversation = [{"from": "human", "value": "<image>\\nHi"}, {"from": "gpt", "value": "Hello"}]
sample = render(SPHINX, conversation, tokenizer, image_token=32000, sample_id="demo-0")
samples = render_batch(SPHINX, [conversation] * 8, tokenizer, image_token=32000)  # batched
```
"""

from sphinx_mllm.data.templates.base import ChatTemplate, ImageSlot
from sphinx_mllm.data.templates.batch import render_batch
from sphinx_mllm.data.templates.builtin import (
    BUILTIN_TEMPLATES,
    CHATML,
    LLAMA2_CHAT,
    PLAIN,
    SPHINX,
    VICUNA_V1,
)
from sphinx_mllm.data.templates.conversation import ConversationError
from sphinx_mllm.data.templates.inspection import label_texts
from sphinx_mllm.data.templates.rendering import (
    IGNORE_INDEX,
    ImageSpan,
    RenderedSample,
    TurnSpan,
    decode_sample,
    render,
)
from sphinx_mllm.data.templates.tokenization import (
    TextTokenizer,
    TokenizationError,
    TokenizerAdapter,
    as_text_tokenizer,
)

__all__ = [
    "BUILTIN_TEMPLATES",
    "CHATML",
    "IGNORE_INDEX",
    "LLAMA2_CHAT",
    "PLAIN",
    "SPHINX",
    "VICUNA_V1",
    "ChatTemplate",
    "ConversationError",
    "ImageSlot",
    "ImageSpan",
    "RenderedSample",
    "TextTokenizer",
    "TokenizationError",
    "TokenizerAdapter",
    "TurnSpan",
    "as_text_tokenizer",
    "decode_sample",
    "label_texts",
    "render",
    "render_batch",
]
