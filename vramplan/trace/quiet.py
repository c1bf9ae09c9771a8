"""Keep third-party chatter off the user's stderr in a trace's own process.

On a normal trace, the libraries print messages about themselves that say nothing about the
user's run: bitsandbytes logs that it could not fetch an optional CPU kernel from the Hub
(``bitsandbytes/backends/cpu/ops.py``, ``logger.warning`` at import), transformers warns
through its logger (``transformers.utils.logging``: deprecated ``torch_dtype``,
``warning_once`` fallbacks) and ``warnings.warn`` (PEFT reads the deprecated
``is_gradient_checkpointing``: a FutureWarning from ``modeling_utils.py``). Call
:func:`quiet_libraries` before torch is imported. Only warnings are lowered: an exception
still propagates, and vramplan's own errors are printed by the CLI as before.
"""

from __future__ import annotations

import logging
import os
import warnings

#: libraries whose warnings and log records below ERROR are dropped in a trace's process.
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "kernels",
    "huggingface_hub",
    "DeepSpeed",
    "trl",
)


def quiet_libraries() -> None:
    """Drop the libraries' warnings and their log records below ERROR (process-wide: the
    trace's process runs one trace). ``TRANSFORMERS_VERBOSITY`` set by the user wins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers sets up its logger
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    pattern = r"(" + "|".join(LIBRARIES) + r")(\.|$)"
    for category in (UserWarning, FutureWarning, DeprecationWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category, module=pattern)
