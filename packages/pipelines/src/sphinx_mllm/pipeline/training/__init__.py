"""Training a `SphinxModel`: data (`TrainingData`), the `Trainer`, resumable checkpoints,
torch.distributed plumbing, a whole `sphinx-pipeline train` session and its figures."""

from sphinx_mllm.pipeline.training.data import Batch, DataSource, TrainingData
from sphinx_mllm.pipeline.training.trainer import (
    NonFiniteLossError,
    StepLog,
    TrainConfig,
    Trainer,
    TrainResult,
)

__all__ = [
    "Batch",
    "DataSource",
    "NonFiniteLossError",
    "StepLog",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingData",
]
