"""Image-free TiUE distillation: VSD + KL into a loop-free student, on one process or many.

    from tiue.train import TrainConfig, Trainer
    Trainer(TrainConfig(teacher=..., captions=..., output_dir=...)).fit()
"""

from tiue.train.config import TrainConfig
from tiue.train.trainer import NonFiniteLossError, Trainer, TrainResult

__all__ = ["TrainConfig", "Trainer", "TrainResult", "NonFiniteLossError"]
