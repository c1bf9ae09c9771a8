"""Stand-in ``torch.distributed``: no process group (ranks come from the environment)."""


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    return False


def get_rank() -> int:
    raise RuntimeError("no process group")
