"""The training core shared by every task: loop, schedules, early stopping, checkpoints, plots."""

from mambamixer.training.checkpoint import load_checkpoint, read_run, save_checkpoint
from mambamixer.training.seed import seed_everything
from mambamixer.training.trainer import TrainConfig, TrainResult, TrainState, fit, lr_at

__all__ = ["TrainConfig", "TrainResult", "TrainState", "fit", "load_checkpoint", "lr_at", "read_run",
           "save_checkpoint", "seed_everything"]
