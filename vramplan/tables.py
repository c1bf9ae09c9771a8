"""Where the data tables live: inside the installed wheel, or beside the source tree."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def tables_dir() -> Path:
    """``vramplan/tables`` in an installed wheel, else ``<repo>/tables`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "tables", here.parent / "tables"):
        if (candidate / "overheads.json").is_file():
            return candidate
    raise FileNotFoundError(f"vramplan data tables not found beside {here}")
