"""A stand-in for torch in the processes `vramplan measure` tests run: the CUDA counters the hook
reads (``torch.cuda``), torch's global optimizer step hook and its out-of-memory error. Nothing
else of torch: the stand-in training script (train_stub.py) drives the counters itself."""

import sys

if __name__ == "torch" and "vramplan.measure_run" in sys.modules:  # vramplan measure's process: no torch
    raise ImportError("vramplan measure imported torch in its own process")

from . import cuda, distributed, optim  # noqa: E402

__version__ = "2.99.0+stub"
OutOfMemoryError = cuda.OutOfMemoryError

__all__ = ["OutOfMemoryError", "cuda", "distributed", "optim"]
