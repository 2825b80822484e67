"""Layer 6, training: a ``ScratchVAE`` trained on accelerate (``trainer.py``), from one ``TrainConfig``
(``config.py``, ``presets.py``): its objective and losses, its batches, its optimisation, validation, run folder,
checkpoints, tracking, and the exported model.

The names below load on first use: the command line reads the settings without importing the loop."""

import importlib

_EXPORTS = {
    "PRESETS": "presets", "load_config": "presets", "TrainConfig": "config", "TrainingDiverged": "checkpoints",
    "Trainer": "trainer", "TrainResult": "trainer", "train": "trainer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
