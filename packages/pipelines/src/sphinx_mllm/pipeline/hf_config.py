"""`SphinxConfig`: a whole `SphinxModel` as a transformers `PretrainedConfig` (`model_type`
`"sphinx"`), the `config.json` of a checkpoint.

It carries the toolkit's `ModelConfig` (`model`: every component by registry name and arguments,
the LLM with its whole transformers config), the image-token id, and the frozen pretrained
encoders a checkpoint references by source instead of copying (`referenced_encoders`: weight
prefix -> source and the SHA-256 of the weights the model was saved with).

```python
config = AutoConfig.from_pretrained("my-sphinx")   # after `import sphinx_mllm.pipeline.model`
config.model_config.vision.encoders[0].name        # the ModelConfig
```
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from sphinx_mllm.pipeline.config import ModelConfig

FORMAT_VERSION = 2
# what transformers' Auto classes pass to `from_pretrained` for the hub; the toolkit reads local
# directories only, so these have nothing to do (`subfolder` is followed)
HUB_OPTIONS = frozenset(
    {"cache_dir", "force_download", "local_files_only", "proxies", "subfolder", "_from_auto",
     "trust_remote_code", "revision", "token", "code_revision", "adapter_kwargs"}
)  # fmt: skip


class SphinxConfig(PretrainedConfig):
    """The config of a `SphinxModel`; `model_config` is its `ModelConfig` (None for a model
    assembled from parts by hand, which cannot be saved)."""

    model_type = "sphinx"

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        image_token_id: int | None = None,
        referenced_encoders: dict[str, dict[str, str]] | None = None,
        sphinx_format: int = FORMAT_VERSION,
        **kwargs: Any,
    ) -> None:
        self.model = model
        self.image_token_id = image_token_id
        self.referenced_encoders = dict(referenced_encoders or {})
        self.sphinx_format = sphinx_format
        self._model_config: ModelConfig | None = None
        super().__init__(**kwargs)

    @classmethod
    def of(
        cls, model_config: ModelConfig | None, image_token_id: int, **kwargs: Any
    ) -> SphinxConfig:
        config = cls(
            model=None if model_config is None else model_config.to_dict(),
            image_token_id=image_token_id,
            **kwargs,
        )
        config._model_config = model_config
        return config

    @property
    def model_config(self) -> ModelConfig | None:
        """The `ModelConfig` this config carries (checked when first read)."""
        if self._model_config is None and self.model is not None:
            self._model_config = ModelConfig.from_dict(self.model)
        return self._model_config

    @model_config.setter
    def model_config(self, value: ModelConfig | None) -> None:
        self._model_config = value
        self.model = None if value is None else value.to_dict()

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_model_config", None)
        return output
