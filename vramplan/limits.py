"""Bounds on every number a user gives, in one place: the CLI, ``plan()``, ``Setup`` and the
config.json reader all check against these and say them in the error message.

Each bound is generous enough for every real model and run, with a margin; beyond it a value
is a typo or a fuzz, and answering it would only cost time. The largest values in the catalog
(``tables/models/*/config.json``) and in well-known configs, for scale:

- layers: 126 (Llama-3.1-405B); hidden: 16384 (Llama-3.1-405B); MLP width: 53248
  (Llama-3.1-405B); vocabulary: 262144 (Gemma 3); heads: 128; head_dim: 256 (Gemma 2);
  context: 10485760 (Llama 4 Scout ``max_position_embeddings``); experts: 384 (Kimi K2);
  vision towers: 48 blocks of width 1664 (Qwen-VL ``visual``).
"""

from __future__ import annotations

# model config.json
MAX_LAYERS = 1 << 10
MAX_HIDDEN = 1 << 17
MAX_INTERMEDIATE = 1 << 20
MAX_VOCAB = 1 << 22
MAX_HEADS = 1 << 12
MAX_HEAD_DIM = 1 << 13
MAX_POSITIONS = 1 << 30
MAX_EXPERTS = 1 << 14
MAX_PATCH = 1 << 10
MAX_VISION_QUERIES = 1 << 16
MAX_CHANNELS = 64
MAX_MLP_RATIO = 64.0
MAX_SOFTCAP = 1e6
MAX_CONFIG_BYTES = 16 << 20  # a config.json is a few KiB; a bigger file is refused unread
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux

# the run (Setup)
MAX_SEQ_LEN = 1 << 20
MAX_MICRO_BATCH = 1 << 12
MAX_GRAD_ACCUM = 1 << 16
MAX_LORA_RANK = 1 << 14
MAX_LORA_ALPHA = float(1 << 20)
MAX_GPUS = 1 << 12
MAX_GPUS_PER_NODE = 64
MAX_IMAGES = 256
MAX_IMAGE_SIDE = 1 << 15  # pixels per side of an image or a video frame
MAX_VIDEO_FRAMES = 768  # Qwen2-VL's video processor samples at most 768 frames
MAX_GENERATIONS = 1 << 10
MAX_BETA = 1e3
MAX_STEPS = 1000  # optimizer steps a trace or measurement runs (the second is the steady one)

# the CLI's run length, cost and host
MAX_SAMPLES = 10**12
MAX_DATASET_TOKENS = 10**15
MAX_EPOCHS = 1e4
MAX_PRICE_PER_HOUR = 1e6
MAX_HOST_RAM_GIB = float(1 << 20)


def said(bound: float) -> str:
    """A bound as a message says it: ``1,048,576``, ``0.5``, ``1e+06`` never."""
    if float(bound).is_integer():
        return f"{int(bound):,}"
    return f"{bound:g}"
