"""Layer 6, training: a ``ScratchVAE`` trained on accelerate (``trainer.py``), from one ``TrainConfig``
(``config.py``, ``presets.py``): its objective and losses, its batches, its optimisation, validation, run folder,
checkpoints, tracking, and the exported model."""

from .checkpoints import TrainingDiverged
from .config import TrainConfig
from .presets import PRESETS, load_config
from .trainer import Trainer, TrainResult, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "load_config", "train"]
