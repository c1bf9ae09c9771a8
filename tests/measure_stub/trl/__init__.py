"""Stand-in TRL: an SFTTrainer subclassing transformers' Trainer (as trl/trainer/sft_trainer.py's does)."""

from transformers.trainer import Trainer

__version__ = "1.99.0+stub"


class SFTTrainer(Trainer):
    pass
