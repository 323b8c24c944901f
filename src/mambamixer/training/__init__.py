"""The training core shared by every task: loop, schedules, early stopping, checkpoints, resume,
DistributedDataParallel, plots."""

from mambamixer.training.checkpoint import (
    STATE_NAME,
    load_checkpoint,
    load_train_state,
    read_run,
    save_checkpoint,
    save_train_state,
)
from mambamixer.training.distributed import Context, EpochSampler
from mambamixer.training.seed import seed_everything
from mambamixer.training.trainer import TrainConfig, TrainingInterrupted, TrainResult, TrainState, fit, lr_at

__all__ = ["STATE_NAME", "Context", "EpochSampler", "TrainConfig", "TrainResult", "TrainState", "TrainingInterrupted",
           "fit", "load_checkpoint", "load_train_state", "lr_at", "read_run", "save_checkpoint", "save_train_state",
           "seed_everything"]
