"""The measuring hook's parts in this process (vramplan/measure_hook.py), over the stand-in torch
of tests/measure_stub loaded under another name: no torch, no subprocess."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vramplan import measure_hook
from vramplan.measure_hook import Hook, is_oom, parse_oom, patch_class_tree, trainer_of

STUB = Path(__file__).resolve().parent / "measure_stub"
MIB, GIB = 1 << 20, 1 << 30
_names = itertools.count()


def fresh_torch() -> Any:
    """A new copy of the stand-in torch (its counters at zero), under a name of its own."""
    name = f"stubtorch_{next(_names)}"
    spec = importlib.util.spec_from_file_location(
        name, STUB / "torch" / "__init__.py", submodule_search_locations=[str(STUB / "torch")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def hook_on(torch: Any, folder: Path) -> Hook:
    hook = Hook(str(folder))
    hook.torch = torch
    hook.reset = torch.cuda.reset_peak_memory_stats
    hook.nvml = measure_hook._Nvml()  # no pynvml in this process: no NVML reading
    return hook


def test_parse_oom_reads_torch_2_message() -> None:
    message = (
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.52 GiB of which 1.10 GiB"
        " is free. Including non-PyTorch memory, this process has 22.41 GiB memory in use. Of the allocated memory"
        " 21.90 GiB is allocated by PyTorch, and 320.00 MiB is reserved by PyTorch but unallocated."
    )
    got = parse_oom(message)
    assert got == {
        "tried_to_allocate": 2 * GIB,
        "total_capacity": int(23.52 * GIB),
        "free": int(1.10 * GIB),
        "process_in_use": int(22.41 * GIB),
        "allocated_by_torch": int(21.90 * GIB),
        "reserved": int(21.90 * GIB) + 320 * MIB,
    }


def test_parse_oom_tells_this_process_from_another() -> None:
    message = (  # a public traceback's message, another process on the same card
        "CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 14.57 GiB of which 1.58 GiB"
        " is free. Process 2493055 has 12.02 GiB memory in use. Including non-PyTorch memory, this process has"
        " 966.00 MiB memory in use. Of the allocated memory 734.07 MiB is allocated by PyTorch, and 33.93 MiB is"
        " reserved by PyTorch but unallocated."
    )
    got = parse_oom(message)
    assert got["process_in_use"] == 966 * MIB and got["total_capacity"] == int(14.57 * GIB)
    assert got["reserved"] == int(734.07 * MIB) + int(33.93 * MIB)


def test_parse_oom_reads_torch_1_message() -> None:
    message = (
        "CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 79.35 GiB total capacity; 77.10 GiB already"
        " allocated; 301.19 MiB free; 78.02 GiB reserved in total by PyTorch)"
    )
    got = parse_oom(message)
    assert got["tried_to_allocate"] == 512 * MIB
    assert got["total_capacity"] == int(79.35 * GIB)
    assert got["allocated_by_torch"] == int(77.10 * GIB)
    assert got["reserved"] == int(78.02 * GIB)
    assert parse_oom("no numbers here") == {}


def test_is_oom_knows_torch_error_by_name_and_old_runtime_error() -> None:
    oom = type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch"})  # torch.OutOfMemoryError's place
    assert is_oom(oom("x"))
    assert not is_oom(type("OutOfMemoryError", (Exception,), {"__module__": "mylib"})("x"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"))
    assert not is_oom(RuntimeError("CUDA error: an illegal memory access"))
    assert not is_oom(MemoryError())


def test_trainer_is_named_by_the_first_known_class_of_the_mro() -> None:
    sft = type("SFTTrainer", (), {"__module__": "trl.trainer.sft_trainer"})
    mine = type("MyTrainer", (sft,), {"__module__": "__main__"})
    assert trainer_of(mine) == ("trl", "trl.trainer.sft_trainer.SFTTrainer")
    plain = type("Trainer", (), {"__module__": "transformers.trainer"})
    assert trainer_of(type("Seq2SeqTrainer", (plain,), {"__module__": "swift.trainers.trainers"}))[0] == "swift"
    assert trainer_of(type("Loop", (), {"__module__": "__main__"})) == ("", "__main__.Loop")


def test_phases_keep_their_own_peaks(tmp_path: Path) -> None:
    torch = fresh_torch()
    hook = hook_on(torch, tmp_path)
    cuda = torch.cuda
    cuda.malloc(1000 * MIB)  # load
    hook.enter("train")
    cuda.malloc(700 * MIB)
    cuda.free(700 * MIB)
    hook.enter("eval")
    cuda.malloc(300 * MIB)
    cuda.free(300 * MIB)
    hook.leave()
    hook.leave()
    hook.finish()
    phases = hook.phases
    assert phases["load"]["0"] == {"allocated": 1000 * MIB, "reserved": 1024 * MIB}
    assert phases["train"]["0"]["allocated"] == 1700 * MIB
    assert phases["eval"]["0"]["allocated"] == 1300 * MIB  # not the train peak: reset at the boundary
    assert phases["eval"]["0"]["reserved"] == 1728 * MIB  # the cache never shrinks
    assert hook.stack == ["other"]
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(record["phases"]) == {"load", "train", "eval", "other"}
    assert record["devices"]["0"]["name"] == "NVIDIA GeForce RTX 4090"


def test_a_reset_the_run_makes_folds_the_peak_first(tmp_path: Path) -> None:
    torch = fresh_torch()
    hook = hook_on(torch, tmp_path)
    hook.enter("train")
    torch.cuda.malloc(900 * MIB)
    torch.cuda.free(900 * MIB)
    hook.user_reset()  # transformers' TrainerMemoryTracker resets the peaks itself
    assert torch.cuda.max_memory_allocated(0) == 0
    hook.fold()
    assert hook.phases["train"]["0"]["allocated"] == 900 * MIB


def test_without_trainer_the_run_is_one_phase(tmp_path: Path) -> None:
    torch = fresh_torch()
    hook = hook_on(torch, tmp_path)
    torch.cuda.malloc(800 * MIB)
    hook.on_step()
    hook.finish()
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert list(record["phases"]) == ["run"] and record["steps"] == 1


def test_a_process_without_cuda_writes_nothing(tmp_path: Path) -> None:
    hook = hook_on(fresh_torch(), tmp_path)  # torch imported, CUDA never initialised (a launcher)
    hook.finish()
    assert not list(tmp_path.iterdir())


def test_oom_is_recorded_with_its_numbers(tmp_path: Path) -> None:
    torch = fresh_torch()
    hook = hook_on(torch, tmp_path)
    torch.cuda.malloc(1000 * MIB)
    with pytest.raises(torch.OutOfMemoryError) as caught:
        torch.cuda.malloc(30 * GIB)
    hook.on_exception(caught.value)
    hook.finish()
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["outcome"] == "oom"
    assert record["oom"]["tried_to_allocate"] == 30 * GIB
    assert record["oom"]["total_capacity"] == int(23.51 * GIB)
    assert record["devices"]["0"]["num_ooms"] == 1


def test_the_first_ending_stays(tmp_path: Path) -> None:
    hook = hook_on(fresh_torch(), tmp_path)
    hook.on_exception(KeyboardInterrupt())
    hook.on_exception(ValueError("later"))
    hook.finish("killed")
    assert hook.outcome == "interrupted"


def test_a_subclass_evaluate_runs_in_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = fresh_torch()
    hook = hook_on(torch, tmp_path)
    monkeypatch.setattr(measure_hook, "_HOOK", hook)
    module = ModuleType("transformers.trainer")

    class Trainer:
        def train(self) -> None:
            self.evaluate()

        def evaluate(self) -> None:
            pass

    module.Trainer = Trainer  # type: ignore[attr-defined]
    measure_hook.patch_trainer(module)

    class Seq2Seq(Trainer):  # defined after transformers.trainer was patched, as every trainer's is
        def evaluate(self) -> None:  # allocates before it calls super(), as generation set-up does
            torch.cuda.malloc(400 * MIB)
            torch.cuda.free(400 * MIB)
            super().evaluate()

    torch.cuda.malloc(100 * MIB)
    Seq2Seq().train()
    assert hook.phases["eval"]["0"]["allocated"] == 500 * MIB
    assert hook.trainer_class.endswith("Seq2Seq")
    patch_class_tree(Seq2Seq)  # twice is once
    assert not hasattr(Seq2Seq.evaluate.__wrapped__, "__vramplan_phase__")  # type: ignore[attr-defined]


def test_a_subclass_train_is_seen_before_it_calls_super(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ms-swift's SwiftMixin.train does its own set-up before super().train(): the trainer is
    named, and the set-up counted in train, even when that set-up fails."""
    hook = hook_on(fresh_torch(), tmp_path)
    monkeypatch.setattr(measure_hook, "_HOOK", hook)
    module = ModuleType("transformers.trainer")
    module.Trainer = type("Trainer", (), {"train": lambda self: None})  # type: ignore[attr-defined]
    measure_hook.patch_trainer(module)

    class Mixin:
        def train(self) -> None:
            raise AttributeError("set-up failed")

    swift = type("Seq2SeqTrainer", (Mixin, module.Trainer), {"__module__": "swift.trainers.seq2seq_trainer"})  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        swift().train()
    assert (hook.trainer, hook.stack) == ("swift", ["load", "train"])
