"""`sphinx-pipeline serve`: a model behind OpenAI's chat-completions API, with a chat page.

```python
app = create_app(model, image_root="images/")     # a FastAPI app; run it with uvicorn
```
"""

from sphinx_mllm.pipeline.serving.app import create_app
from sphinx_mllm.pipeline.serving.limits import RequestError, ServerLimits

__all__ = ["RequestError", "ServerLimits", "create_app"]
