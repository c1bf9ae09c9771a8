"""A stand-in for torch in the processes `vramplan measure` tests run: the CUDA counters the hook
reads (``torch.cuda``), torch's global optimizer step hook and its out-of-memory error. Nothing
else of torch: the stand-in training script (train_stub.py) drives the counters itself."""

from . import cuda, distributed, optim

__version__ = "2.99.0+stub"
OutOfMemoryError = cuda.OutOfMemoryError

__all__ = ["OutOfMemoryError", "cuda", "distributed", "optim"]
