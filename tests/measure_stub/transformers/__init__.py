"""Stand-in transformers: its version and ``transformers.trainer.Trainer``'s shape."""

__version__ = "5.99.0+stub"
