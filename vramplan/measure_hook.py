"""The hook ``vramplan measure -- COMMAND`` puts into every Python process of the user's run.

A generated ``sitecustomize.py`` (vramplan/measure_run.py) imports a copy of this file and calls
:func:`install`; nothing in the user's code changes. It is standalone on purpose: the standard
library only, no vramplan import (the run's Python may be a trainer's own venv), torch read only
once the run itself imports it. A process that never initialises CUDA (torchrun's launcher, a
shell's ``python -c``) writes nothing; every one that does (each torchrun rank) writes one JSON
record, whole (temporary file + ``os.replace``), into the folder ``VRAMPLAN_MEASURE_DIR`` names.

What it reads, per CUDA device the process holds memory on:

- ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``: the caching allocator's peaks
  (torch/cuda/memory.py, ``memory_stats`` ``allocated_bytes.all.peak`` / ``reserved_bytes.all.peak``);
- NVML used memory, when ``pynvml`` (nvidia-ml-py) imports: the process's own entry in
  ``nvmlDeviceGetComputeRunningProcesses`` (what nvidia-smi lists for it: CUDA context and
  allocator together), the device found by the UUID torch reports; when the process is not in
  that list (another PID namespace: a container), the card's ``nvmlDeviceGetMemoryInfo().used``,
  marked ``card`` (other processes on the card included). NVML has no peak: it is sampled after
  every optimizer step, at each phase boundary and at exit, and the largest sample kept;
- ``memory_stats()["num_ooms"]``: the out-of-memory errors the allocator raised, caught or not.

Phases, told apart where transformers' ``Trainer`` runs them: when ``transformers.trainer`` is
imported, ``Trainer.train`` (``train``), ``evaluate`` and ``predict`` (``eval``), ``save_model``
and ``_save_checkpoint`` (``save``) are wrapped; at each boundary the peaks so far are kept as the
ending phase's and reset (``reset_peak_memory_stats``), so each phase keeps its own maximum.
Before ``train`` is ``load`` (building, quantizing, moving the model), after it ``other``; a
phase an exception leaves stays the current one (the record names where the run failed). The
trainers built on ``Trainer`` (TRL, ms-swift, LLaMA-Factory, axolotl) inherit the wrappers, and
each subclass's own methods of those names are wrapped as the subclass is defined (ms-swift's
``SwiftMixin.train``, a ``Seq2SeqTrainer``'s ``evaluate``, run in their phase before they call
``super()``); the trainer is named by the first
class of the trained object's MRO from a known package.

What it cannot tell apart: a loop that is not ``Trainer``'s (one ``run`` phase: model loading
and steps together); evaluation or saving under other method names (counted in ``train``);
forward, backward and optimizer step within a step (``vramplan trace`` does that); a transient
NVML peak between two samples. Caveats: the run's own reads of the peak
counters see per-phase peaks (a reset the run makes itself first folds the peak into the
phase); a Python signal handler runs between bytecodes, so a rank blocked in a long C call
(an NCCL collective) takes SIGTERM when the call returns. Outcomes: ``ok``; ``oom`` (an
uncaught ``torch.OutOfMemoryError``, or a ``RuntimeError`` saying "CUDA out of memory" as torch
before 1.13 raised it: the numbers of its message, :func:`parse_oom`); ``killed`` (SIGTERM, in a
process that had imported torch); ``error`` (another uncaught exception). An error the run
catches itself (``torch.multiprocessing.spawn`` workers, accelerate's
``find_executable_batch_size``) is seen only as ``num_ooms``. Python started with ``-E``, ``-I``
or ``-S`` ignores ``PYTHONPATH`` or ``sitecustomize`` and is not measured.

Longer than 500 lines: it is copied whole, as one standalone file, into the run's Python (which
may not have vramplan), so the import hook, the counters and the record cannot be split into
vramplan modules.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import types
from typing import Any

ENV_DIR = "VRAMPLAN_MEASURE_DIR"
RECORD_FORMAT = "vramplan-measure/1"
#: the Trainer methods wrapped, and the phase each runs (transformers trainer.py, 4.x and 5.x)
TRAINER_PHASES = {
    "train": "train",
    "evaluate": "eval",
    "predict": "eval",
    "save_model": "save",
    "_save_checkpoint": "save",
}
#: the packages whose Trainer subclass names the trainer, and the distribution holding each (read
#: off the trainers' own classes: ms-swift 4.6.0 swift.trainers.seq2seq_trainer.Seq2SeqTrainer,
#: llamafactory 0.9.5 llamafactory.train.sft.trainer.CustomSeq2SeqTrainer, axolotl 0.19.0
#: axolotl.core.trainers.base.AxolotlTrainer, TRL's trl.trainer.sft_trainer.SFTTrainer)
TRAINER_PACKAGES = {
    "swift": ("swift", "ms-swift"),
    "llamafactory": ("llamafactory", "llamafactory"),
    "axolotl": ("axolotl", "axolotl"),
    "trl": ("trl", "trl"),
    "transformers": ("hf", "transformers"),
}
_UNITS = {"bytes": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_SIZE = r"([0-9]+(?:\.[0-9]+)?) ?(bytes|B|KiB|MiB|GiB|TiB)"
#: torch 2.x's message (c10/cuda/CUDACachingAllocator.cpp, ``malloc``'s OutOfMemoryError: "GPU 0 has a total
#: capacity of ..."; another process's use, "Process N has ...", is not this one's), and the older one
_OOM_NEW = {
    "tried_to_allocate": r"Tried to allocate " + _SIZE,
    "total_capacity": r"total capacity of " + _SIZE,
    "free": r"of which " + _SIZE + r" is free",
    "process_in_use": r"this process has " + _SIZE + r" memory in use",
    "allocated_by_torch": r"Of the allocated memory " + _SIZE + r" is allocated by PyTorch",
    "reserved_unallocated": r"and " + _SIZE + r" is reserved by PyTorch but unallocated",
}
_OOM_OLD = {
    "tried_to_allocate": r"Tried to allocate " + _SIZE,
    "total_capacity": _SIZE + r" total capacity",
    "allocated_by_torch": _SIZE + r" already allocated",
    "free": _SIZE + r" free",
    "reserved": _SIZE + r" reserved in total by PyTorch",
}


def parse_oom(message: str) -> dict[str, int]:
    """The byte counts an out-of-memory message states (``tried_to_allocate``,
    ``total_capacity``: the capacity torch runs against, ``free``, ``process_in_use``,
    ``allocated_by_torch``, ``reserved``: allocated plus reserved-but-unallocated), in torch's
    ``format_size`` units; what the message does not say is absent."""
    out: dict[str, int] = {}
    patterns = _OOM_NEW if "total capacity of" in message else _OOM_OLD
    for key, pattern in patterns.items():
        found = re.search(pattern, message)
        if found:
            out[key] = int(float(found.group(1)) * _UNITS[found.group(2)])
    if "reserved" not in out and "allocated_by_torch" in out and "reserved_unallocated" in out:
        out["reserved"] = out["allocated_by_torch"] + out.pop("reserved_unallocated")
    return out


def is_oom(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, a RuntimeError subclass made in torch/csrc/Exceptions.cpp as
    ``torch.cuda.OutOfMemoryError`` (pytorch#83146, torch 1.13), ``torch.OutOfMemoryError`` since
    pytorch#121702 (any class of that name from a torch module), or earlier torch's RuntimeError."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "OutOfMemoryError" and cls.__module__.split(".")[0] == "torch":
            return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def trainer_of(cls: type) -> tuple[str, str]:
    """(trainer, class path): the first class of ``cls``'s MRO defined in a known trainer package."""
    for base in cls.__mro__:
        package = (base.__module__ or "").split(".")[0]
        if package in TRAINER_PACKAGES:
            return TRAINER_PACKAGES[package][0], f"{base.__module__}.{base.__qualname__}"
    return "", f"{cls.__module__}.{cls.__qualname__}"


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return ""


class _Nvml:
    """NVML's view of this process's memory per torch device (None where NVML cannot say)."""

    def __init__(self) -> None:
        self.lib: Any = None
        self.handles: dict[int, Any] = {}
        try:
            import pynvml

            pynvml.nvmlInit()
            self.lib = pynvml
        except Exception:
            self.lib = None

    def _handle(self, torch: Any, device: int) -> Any:
        if device in self.handles:
            return self.handles[device]
        handle = None
        try:
            # torch prints the UUID as 8-4-4-4-12 hex (torch/csrc/cuda/Module.cpp, ``_CUuuid.__str__``);
            # NVML names a card "GPU-" + that, a MIG slice "MIG-" + it
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            for probe in ("GPU-" + uuid, "MIG-" + uuid, uuid):
                try:
                    handle = self.lib.nvmlDeviceGetHandleByUUID(probe)
                    break
                except Exception:
                    continue
        except Exception:
            handle = None
        self.handles[device] = handle
        return handle

    def used(self, torch: Any, device: int) -> tuple[int, str] | None:
        """(bytes, scope): the process's own use (``process``), else the card's (``card``)."""
        if self.lib is None:
            return None
        handle = self._handle(torch, device)
        if handle is None:
            return None
        try:
            for proc in self.lib.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory), "process"
            return int(self.lib.nvmlDeviceGetMemoryInfo(handle).used), "card"
        except Exception:
            return None


class Hook:
    """One process's measurement: the phase stack, each phase's peaks per device, the outcome."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.pid = os.getpid()
        self.started = time.time()
        self.stack = ["load"]
        self.trained = False
        #: phase -> device -> {"allocated", "reserved", "nvml", "nvml_scope"}
        self.phases: dict[str, dict[str, dict[str, Any]]] = {}
        self.steps = 0
        self.outcome = "ok"
        self.error = ""
        self.oom: dict[str, Any] = {}
        self.trainer = ""
        self.trainer_class = ""
        self.torch: Any = None
        self.reset: Any = None  # torch's own reset_peak_memory_stats
        self.nvml: _Nvml | None = None
        self.finished = False
        self.active = True
        self.lock = threading.RLock()

    # --- torch's counters
    def cuda_ready(self) -> bool:
        torch = self.torch
        try:
            return torch is not None and bool(torch.cuda.is_initialized())
        except Exception:
            return False

    def devices(self) -> list[int]:
        try:
            return list(range(int(self.torch.cuda.device_count())))
        except Exception:
            return []

    def fold(self, phase: str | None = None, sample_nvml: bool = True) -> None:
        """The peaks since the last reset, kept as ``phase``'s (the current one) where larger."""
        with self.lock:
            try:
                self._fold(phase, sample_nvml)
            except Exception:
                pass

    def _fold(self, phase: str | None, sample_nvml: bool) -> None:
        if not self.cuda_ready():
            return
        phase = phase or self.stack[-1]
        cuda = self.torch.cuda
        for d in self.devices():
            try:
                allocated, reserved = int(cuda.max_memory_allocated(d)), int(cuda.max_memory_reserved(d))
            except Exception:
                continue
            if not reserved and not allocated:
                continue
            slot = self.phases.setdefault(phase, {}).setdefault(str(d), {"allocated": 0, "reserved": 0})
            slot["allocated"] = max(slot["allocated"], allocated)
            slot["reserved"] = max(slot["reserved"], reserved)
            if sample_nvml:
                self.sample_nvml(d, slot)

    def sample_nvml(self, device: int, slot: dict[str, Any]) -> None:
        if self.nvml is None:
            self.nvml = _Nvml()
        used = self.nvml.used(self.torch, device)
        if used is not None and used[0] >= slot.get("nvml", 0):
            slot["nvml"], slot["nvml_scope"] = used

    def reset_peaks(self) -> None:
        if not self.cuda_ready() or self.reset is None:
            return
        for d in self.devices():
            try:
                self.reset(d)
            except Exception:
                pass

    def boundary(self) -> None:
        self.fold()
        self.reset_peaks()

    # --- phases
    def enter(self, phase: str) -> None:
        with self.lock:
            try:
                if phase == "train":
                    self.trained = True
                if phase != self.stack[-1]:
                    self.boundary()
            finally:
                self.stack.append(phase)

    def leave(self) -> None:
        with self.lock:
            if len(self.stack) < 2:
                return
            try:
                if self.stack[-1] != self.stack[-2]:
                    self.boundary()
            finally:
                left = self.stack.pop()
                if left == "train" and self.stack == ["load"]:
                    self.stack[-1] = "other"

    def on_step(self, *_: Any) -> None:
        """After every optimizer step (torch's global post hook): count it, sample NVML."""
        try:
            self.steps += 1
            if self.cuda_ready():
                phase = self.stack[-1]
                for d in self.devices():
                    slot = self.phases.get(phase, {}).get(str(d))
                    if slot is None:
                        self.fold(phase, sample_nvml=False)
                        slot = self.phases.get(phase, {}).get(str(d))
                    if slot is not None:
                        self.sample_nvml(d, slot)
        except Exception:
            pass

    def user_reset(self, device: Any = None) -> None:
        """The run resets the peaks itself (transformers' TrainerMemoryTracker does): fold first."""
        with self.lock:
            try:
                self.fold()
            except Exception:
                pass
        if self.reset is not None:
            self.reset(device)

    # --- the end
    def on_exception(self, exc: BaseException | None) -> None:
        if exc is None or self.outcome != "ok":
            return
        if is_oom(exc):
            self.outcome = "oom"
            message = str(exc)
            self.oom = {"message": message[:2000], **parse_oom(message)}
        elif isinstance(exc, KeyboardInterrupt):
            self.outcome = "interrupted"
        elif not isinstance(exc, SystemExit):
            self.outcome = "error"
        self.error = f"{type(exc).__name__}: {str(exc)[:300]}"

    def finish(self, outcome: str | None = None) -> None:
        """Fold the last segment and write the record (once; a later call only rewrites it)."""
        with self.lock:
            if not self.active or os.getpid() != self.pid:
                return
            if outcome is not None and self.outcome == "ok":
                self.outcome = outcome
            if not self.cuda_ready():
                return
            try:
                self.fold()
            except Exception:
                pass
            self.write(self.record())
            self.finished = True

    def record(self) -> dict[str, Any]:
        cuda = self.torch.cuda
        phases = {("run" if p == "load" and not self.trained else p): v for p, v in self.phases.items()}
        devices: dict[str, Any] = {}
        for d in self.devices():
            key = str(d)
            if not any(key in per for per in phases.values()):
                continue
            info: dict[str, Any] = {}
            try:
                props = cuda.get_device_properties(d)
                info = {"name": str(props.name), "total_memory": int(props.total_memory)}
            except Exception:
                pass
            try:
                info["num_ooms"] = int(cuda.memory_stats(d).get("num_ooms", 0))
            except Exception:
                pass
            devices[key] = info
        env = os.environ
        versions = {"torch": str(getattr(self.torch, "__version__", ""))}
        for package in ("transformers", "trl", "peft", "accelerate", "deepspeed"):
            if package in sys.modules:
                versions[package] = str(getattr(sys.modules[package], "__version__", "") or _version(package))
        trainer_version = ""
        if self.trainer:
            dist = next(d for t, d in TRAINER_PACKAGES.values() if t == self.trainer)
            trainer_version = versions.get(dist) or _version(dist)
        return {
            "format": RECORD_FORMAT,
            "pid": self.pid,
            "host": socket.gethostname(),
            "rank": _env_int("RANK", _dist_rank(self.torch)),
            "local_rank": _env_int("LOCAL_RANK", None),
            "world_size": _env_int("WORLD_SIZE", None),
            "outcome": self.outcome,
            "error": self.error,
            "oom": self.oom,
            "steps": self.steps,
            "trainer": self.trainer,
            "trainer_class": self.trainer_class,
            "trainer_version": trainer_version,
            "versions": versions,
            "devices": devices,
            "phases": phases,
            "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", ""),
            "seconds": round(time.time() - self.started, 3),
        }

    def write(self, record: dict[str, Any]) -> None:
        rank = record["rank"]
        name = f"rank{rank if rank is not None else 'x'}-pid{self.pid}.json"
        path = os.path.join(self.out_dir, name)
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(record, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            sys.stderr.write(f"vramplan measure: cannot write {path}: {exc}\n")


def _env_int(name: str, default: int | None) -> int | None:
    text = os.environ.get(name, "").strip()
    return int(text) if text.isdigit() else default


def _dist_rank(torch: Any) -> int | None:
    try:
        dist = torch.distributed
        return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else None
    except Exception:
        return None


_HOOK: Hook | None = None


def _wrap(fn: Any, phase: str) -> Any:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        hook = _HOOK
        if hook is None:
            return fn(self, *args, **kwargs)
        if phase == "train":
            try:
                hook.trainer, hook.trainer_class = trainer_of(type(self))
                patch_class_tree(type(self))
            except Exception:
                pass
        hook.enter(phase)
        try:
            result = fn(self, *args, **kwargs)
        except BaseException:
            hook.fold()  # the phase it failed in stays the current one, for the record
            raise
        hook.leave()
        return result

    wrapper.__vramplan_phase__ = phase  # type: ignore[attr-defined]
    return wrapper


def patch_class_tree(cls: type) -> None:
    """Wrap the phase methods each class of ``cls``'s MRO defines (once): a subclass's own
    ``evaluate`` (Seq2SeqTrainer's, a trainer's) runs in ``eval`` even before it calls ``super()``."""
    for klass in cls.__mro__:
        for name, phase in TRAINER_PHASES.items():
            fn = klass.__dict__.get(name)
            if isinstance(fn, types.FunctionType) and not hasattr(fn, "__vramplan_phase__"):
                setattr(klass, name, _wrap(fn, phase))


def patch_trainer(module: Any) -> None:
    """Wrap transformers' Trainer methods with their phases, and those of every subclass as it is
    defined (``__init_subclass__``: TRL's, ms-swift's, LLaMA-Factory's, the user's own)."""
    cls = getattr(module, "Trainer", None)
    if not isinstance(cls, type) or "__vramplan_subclasses__" in cls.__dict__:
        return
    patch_class_tree(cls)
    original = cls.__dict__.get("__init_subclass__")

    def init_subclass(sub: type, **kwargs: Any) -> None:
        if original is not None:
            original.__get__(None, sub)(**kwargs)
        else:
            super(cls, sub).__init_subclass__(**kwargs)  # type: ignore[misc,arg-type]
        try:
            patch_class_tree(sub)
        except Exception:
            pass

    cls.__init_subclass__ = classmethod(init_subclass)  # type: ignore[assignment]
    cls.__vramplan_subclasses__ = True  # type: ignore[attr-defined]


def attach_torch(torch: Any) -> None:
    """Once torch is imported: its counters, the reset the run may call, the optimizer step
    hook, the SIGTERM handler and the exit handler (registered after torch's own, so it runs
    before them)."""
    hook = _HOOK
    if hook is None or hook.torch is not None:
        return
    hook.torch = torch
    cuda = torch.cuda
    hook.reset = getattr(cuda, "reset_peak_memory_stats", None)
    if hook.reset is not None:
        for owner in (cuda, getattr(cuda, "memory", None)):
            if owner is not None and hasattr(owner, "reset_peak_memory_stats"):
                owner.reset_peak_memory_stats = hook.user_reset
    try:  # torch.optim's namespace drops its submodule's name (torch 2.13): imported by its full name
        optimizer = importlib.import_module(torch.__name__ + ".optim.optimizer")
        optimizer.register_optimizer_step_post_hook(hook.on_step)
    except Exception:
        pass
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            pass
    atexit.register(_at_exit)


def _on_sigterm(signum: int, frame: Any) -> None:
    hook = _HOOK
    if hook is not None:
        try:
            hook.finish("killed")
        except Exception:
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _at_exit() -> None:
    hook = _HOOK
    if hook is None:
        return
    try:
        # set by the interpreter for an uncaught exception before sys.excepthook runs (pythonrun.c
        # ``_PyErr_PrintEx``), so it is seen even when the run replaced the excepthook
        hook.on_exception(getattr(sys, "last_exc", None) or getattr(sys, "last_value", None))
        hook.finish()
    except Exception as exc:
        sys.stderr.write(f"vramplan measure: {type(exc).__name__}: {exc}\n")


def _excepthook(previous: Any) -> Any:
    def hook(kind: type, value: BaseException, tb: Any) -> None:
        if _HOOK is not None:
            try:
                _HOOK.on_exception(value)
                _HOOK.finish()  # now, while the failing frames still hold their tensors
            except Exception:
                pass
        previous(kind, value, tb)

    return hook


class _PostImport:
    """A meta path finder that runs ``callback(module)`` once the named module has executed; the
    module keeps its own loader (``__loader__`` and ``__spec__.loader`` are put back)."""

    def __init__(self, callbacks: dict[str, Any]) -> None:
        self.callbacks = callbacks

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader, self.callbacks[name])  # type: ignore[assignment]
                return spec
            if spec is not None:
                return spec
        return None


class _Loader:
    def __init__(self, loader: Any, callback: Any) -> None:
        self.loader = loader
        self.callback = callback

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            self.callback(module)
        except Exception as exc:
            sys.stderr.write(f"vramplan measure: {module.__name__}: {type(exc).__name__}: {exc}\n")


def _in_child() -> None:
    if _HOOK is not None:
        _HOOK.active = False  # a forked child (a data loader worker) is not the rank


def install(out_dir: str | None = None) -> Hook | None:
    """Start measuring this process: records go to ``out_dir`` (default ``$VRAMPLAN_MEASURE_DIR``)."""
    global _HOOK
    folder = out_dir or os.environ.get(ENV_DIR, "")
    if not folder or _HOOK is not None:
        return _HOOK
    _HOOK = Hook(folder)
    sys.excepthook = _excepthook(sys.excepthook)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_in_child)
    sys.meta_path.insert(0, _PostImport({"torch": attach_torch, "transformers.trainer": patch_trainer}))
    if "torch" in sys.modules:
        attach_torch(sys.modules["torch"])
    if "transformers.trainer" in sys.modules:
        patch_trainer(sys.modules["transformers.trainer"])
    return _HOOK
