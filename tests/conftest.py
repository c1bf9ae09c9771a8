from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from vramplan.spec import ModelSpec, spec_from_config

# No test reaches the Hub: an id outside the catalog is answered from an empty cache of the
# session's own (tests/test_hub.py serves a stand-in Hub on localhost and lifts this itself).
# Set at import, before any test runs, so subprocesses inherit it too.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["VRAMPLAN_CACHE"] = tempfile.mkdtemp(prefix="vramplan-test-cache-")

TINY_CONFIG = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
    "max_position_embeddings": 512,
}


def requires(*modules: str) -> pytest.MarkDecorator:
    """Skip unless every named top-level module is installed. ``importlib.util.find_spec`` finds a
    top-level module without importing it, so collecting a test costs no torch import (where
    ``pytest.importorskip`` at module level would import it for every tier)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


def error_line(stderr: str) -> str:
    """The one line of ours in a subprocess's stderr: ``vramplan: error: ...``. Whatever a
    third-party library prints there besides (warnings, download notes) is not ours to test."""
    ours = [line for line in stderr.splitlines() if line.startswith("vramplan:")]
    assert len(ours) == 1, stderr[-2000:]
    return ours[0]


def save_word_tokenizer(texts: list[str], folder: object, eos: str = "</s>", extra: tuple[str, ...] = ()) -> int:
    """A word-level fast tokenizer trained on ``texts`` (no download), saved into ``folder``;
    returns its size. ``extra`` are further special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[PAD]", "</s>", *extra]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token=eos)
    fast.save_pretrained(folder)
    return len(fast)


def write_samples(samples: list[dict], root: Path) -> tuple[Path, int]:
    """``samples`` as ``root/data.jsonl`` and a word-level tokenizer over them (plus the
    prompt template's words) in ``root/model``; returns the data file and the vocabulary
    size, for the emit tests' tiny models."""
    import json

    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in samples))
    size = save_word_tokenizer([json.dumps(s) for s in samples] + ["### User Assistant :"], root / "model")
    return data, size


def measured_row(**over: str) -> dict[str, str]:
    """One row of the published-measurements schema that validate can compare: a LoRA run of
    the catalog's Qwen2.5-0.5B on an RTX 4090; ``over`` changes (or adds) fields."""
    from vramplan.published import COLUMNS

    return (
        dict.fromkeys(COLUMNS, "")
        | dict(
            source="my lab notebook",
            model="qwen2.5-0.5b",
            method="lora",
            quant="none",
            precision="bf16",
            lora_rank="8",
            lora_targets="all-linear",
            optimizer="adamw",
            seq_len="512",
            micro_batch="2",
            grad_accum="1",
            grad_checkpointing="true",
            attention="sdpa",
            num_gpus="1",
            parallel="none",
            offload="none",
            gpu="rtx-4090",
            measured_value="4.5",
            measured_unit="GiB",
            measurement="reserved",
            outcome="ok",
        )
        | over
    )


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny config as a config.json on disk, for the harness and the CLI."""
    import json

    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return str(path)


@pytest.fixture
def tiny() -> ModelSpec:
    """A two-layer Qwen2-shaped model small enough to count by hand."""
    return spec_from_config(dict(TINY_CONFIG), name="tiny")


def pytest_configure(config: pytest.Config) -> None:
    """Property tests explore freely on a developer's machine and replay a fixed sequence in
    CI, so a landing never hangs on a new random draw (failures found locally become
    @example cases)."""
    import os

    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI"):
        settings.load_profile("ci")


TIERS = ("analytic", "trace", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier, named by a marker on the test, its class or its
    module (``pytestmark``); a test that names none is analytic. Select a tier with
    ``-m analytic`` (seconds, no torch), ``-m trace`` or ``-m e2e``."""
    for item in items:
        named = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(named) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {named}; a test belongs to one tier")
        if not named:
            item.add_marker(pytest.mark.analytic)


#: what the analytic tier never imports (the plain planner doesn't: tests/test_cli.py)
HEAVY = ("torch", "transformers", "peft")


def _heavy_loaded() -> list[str]:
    import sys

    return [name for name in HEAVY if name in sys.modules]


def _analytic_only(config: pytest.Config) -> bool:
    return (config.option.markexpr or "").strip() == "analytic"


def pytest_collection_finish(session: pytest.Session) -> None:
    if _analytic_only(session.config) and _heavy_loaded():
        session.config.stash[_FIRST_HEAVY] = "collection"


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _analytic_only(item.config) and _FIRST_HEAVY not in item.config.stash and _heavy_loaded():
        item.config.stash[_FIRST_HEAVY] = item.nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``-m analytic`` is the tier that imports no torch: a run of it that loaded torch,
    transformers or peft (at collection or in a test) fails, naming where it first happened."""
    if not _analytic_only(session.config):
        return
    loaded = _heavy_loaded()
    if loaded:
        where = session.config.stash.get(_FIRST_HEAVY, "the session")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the analytic tier imported {', '.join(loaded)} (first seen after {where})"
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_FIRST_HEAVY = pytest.StashKey[str]()


def _fresh(name: str) -> ModuleType:
    """The module run afresh, so its ``register`` call runs against the registries as they are now."""
    return importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)


@pytest.fixture
def toy_family(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """tests/toy_family.py registered into a copy of the family registry, gone after the test."""
    from vramplan.arch import registry

    monkeypatch.setattr(registry, "_BY_TYPE", dict(registry._BY_TYPE))
    yield _fresh("tests.toy_family")


@pytest.fixture
def toy_trainer(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """tests/toy_trainer.py registered into a copy of the trainer registry, gone after the test."""
    from vramplan.frameworks import base

    monkeypatch.setattr(base, "_registry", dict(base._registry))
    yield _fresh("tests.toy_trainer")


#: transformers ``OptimizerNames`` read back to Setup's optimizer names: the tests' own table
#: (not the emitters' HF_OPTIM inverted), so an emitter that writes the wrong name is caught.
OPTIM_BACK = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw-fused",
    "adamw_bnb_8bit": "adamw-8bit",
    "paged_adamw_8bit": "paged-adamw-8bit",
    "paged_adamw_32bit": "paged-adamw-32bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
    "lion_32bit": "lion",
}


def tiny_causal_lm(root: Path, samples: int = 8) -> tuple[Path, Path]:
    """A random-weight tiny qwen2 (TINY_CONFIG) with a word tokenizer in ``root/model``, and
    ``samples`` alpaca records the tokenizer covers: (model folder, data file)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    records = [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"It is {2 * i + 1}."} for i in range(samples)
    ]
    data, size = write_samples(records, root)
    assert size < TINY_CONFIG["vocab_size"]
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_CONFIG)).save_pretrained(root / "model")
    return root / "model", data
