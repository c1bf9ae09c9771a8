"""A trainer, as vramplan plans and emits for it, and the registry of them.

A :class:`Framework` says what its trainer can run of a Setup (:meth:`~Framework.supports`:
refusals as data), what it changes in the Setup to express it (:meth:`~Framework.adapt`), how
it runs it (:meth:`~Framework.policy`, what the memory terms read) and the files that start
it (:meth:`~Framework.render`). A trainer is one module that defines its Framework and calls
:func:`register` once.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError
from vramplan.policy import Policy, default_policy
from vramplan.setup import Setup
from vramplan.spec import ModelSpec

if TYPE_CHECKING:
    from vramplan.frameworks.files.common import Context


class Refusal(BaseModel):
    """Why a trainer cannot run (or vramplan cannot emit) a Setup: the Setup field at fault
    (``emit`` when it is the target as a whole), a stable code, and the sentence."""

    model_config = ConfigDict(frozen=True)
    field: str
    code: str
    text: str

    def error(self) -> VramplanError:
        """The refusal as the one-line error the CLI prints (exit 2)."""
        return VramplanError(self.field, self.text)


#: refusals of the plan as a whole, which come before the check of the values an emitted
#: file must hold (emit/emitter.py); the others come after it.
PLAN_REFUSALS = frozenset({"inference", "video", "images", "moe_all_linear", "grpo"})


class Framework:
    """One trainer. The class attributes say what its emitted run can train; the methods
    default to the plain transformers Trainer loop that today's estimates describe."""

    name: str = ""
    #: one line naming the program and how it starts
    title: str = ""
    #: the distribution users install (``pip install <package>``), whose version is checked
    package: str = ""
    #: the release series its policy was read from (``"1.16"``: every 1.16.x); another installed
    #: series gets a warning, since the trainer's memory behaviour may have moved
    established: str = ""
    #: trains on images (a VLM's processor feeds them)
    images: bool = False
    #: runs GRPO (a trainer with generation)
    grpo: bool = False
    #: its all-linear LoRA option reaches a MoE's router and fused experts, as PEFT's literal 'all-linear' does
    moe_all_linear: bool = False
    #: loads vision-language models (the language model trained on text)
    vision_models: bool = False
    #: loads remote-code families (Qwen v1, Qwen-VL) with the repository's own modeling code, through
    #: its own model loader; the emitted files tell it to trust that code where it asks (vramplan
    #: never runs it). Vision-language ones among them are emitted for text-only LoRA/QLoRA.
    remote_code: bool = False
    #: the parallel layouts it is emitted for
    layouts: tuple[str, ...] = ("none", "ddp")
    #: the module whose ``trace_sft(model, setup, steps) -> TraceResult`` traces this trainer's own
    #: training step under fake tensors (``vramplan trace --trainer NAME``); empty: none yet
    tracer: str = ""
    #: the environment variable naming a Python that has this trainer installed, when its pins
    #: clash with the planner's (its own venv: ``.ci/venv-<name>.sh``); the trace runs there
    python_env: str = ""

    def supports(self, setup: Setup, spec: ModelSpec) -> list[Refusal]:
        """What of ``setup`` on ``spec`` this trainer is not emitted for, first refusal first."""
        return plan_refusals(self, setup, spec) + model_refusals(self, setup, spec) + layout_refusals(self, setup)

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        """The Setup this trainer runs for ``setup`` (the nearest it can express) and what changed."""
        return setup, []

    def policy(self, setup: Setup) -> Policy:
        """What the memory terms read of this trainer's run of ``setup``."""
        return default_policy(setup)

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        """The files (name -> text) and the command that starts the run."""
        raise VramplanError("emit", f"{self.name}: no files are emitted for it")


def plan_refusals(fw: Framework, setup: Setup, spec: ModelSpec) -> list[Refusal]:
    """What no emitted run of this trainer trains: inference, videos, images, a MoE's
    all-linear adapters, GRPO."""
    name = fw.name
    out = []
    if setup.method == "inference":
        out.append(
            Refusal(
                field="emit",
                code="inference",
                text="the targets are fine-tuning trainers: an inference plan has nothing to emit",
            )
        )
    if setup.video_frames:
        text = "training with videos is not emitted yet: plan it, then set the trainer by hand"
        out.append(Refusal(field="emit", code="video", text=text))
    if setup.images_per_sample and not fw.images:
        text = (
            f"{name}: training with images is emitted for trl only (--emit trl: SFTTrainer or GRPOTrainer with"
            " the model's processor); plan it, then set the trainer by hand"
        )
        out.append(Refusal(field="emit", code="images", text=text))
    all_linear = setup.is_lora and setup.lora_targets.strip().lower() == "all-linear"
    # experts PEFT's all-linear reaches (GPT-OSS's bare expert parameters: none, so nothing to differ on)
    reached = any(lin.nn_linear or lin.param_target_rank for lin in spec.moe_mlp)
    if all_linear and not fw.moe_all_linear and spec.moe is not None and reached:
        text = (
            f"{name}: its all-linear option does not reach a MoE's router and fused experts, which the plan counts"
            " (PEFT adds them for the literal 'all-linear'): --emit trl, or plan with named targets"
        )
        out.append(Refusal(field="emit", code="moe_all_linear", text=text))
    if setup.rl != "none" and not fw.grpo:
        text = f"{name}: GRPO plans are emitted for trl only (--emit trl: GRPOTrainer)"
        out.append(Refusal(field="emit", code="grpo", text=text))
    return out


def model_refusals(fw: Framework, setup: Setup, spec: ModelSpec) -> list[Refusal]:
    """Models the emitted trainers do not load: remote-code architectures where the trainer's emitted
    run loads transformers' own classes, full/freeze of a remote-code vision-language model, and
    vision-language models where the trainer loads text models only (or under FSDP)."""
    out = []
    if spec.remote_code and not fw.remote_code:
        text = (
            f"{fw.name}: {spec.name} is a remote-code architecture (Qwen v1) and the emitted {fw.name} run loads"
            " transformers' own model classes: --emit swift or llamafactory (their model loaders run the"
            " repository's code), or plan it, then set the trainer by hand"
        )
        out.append(Refusal(field="emit", code="remote_code", text=text))
        return out
    remote_vlm = spec.remote_code and spec.vision is not None
    if remote_vlm and not setup.is_lora:
        text = (
            f"{fw.name}: {spec.name}'s vision tower is part of the repository's one model, and which of it"
            f" {fw.name} trains in a {setup.method} run is not mapped: emitted for LoRA/QLoRA (text only)"
        )
        out.append(Refusal(field="emit", code="remote_code_vlm_method", text=text))
    if spec.vision is not None and not remote_vlm and (not fw.vision_models or setup.parallel == "fsdp"):
        why = "FSDP wrapping of a vision tower is not planned" if fw.vision_models else "its trainer loads text models"
        text = (
            f"{spec.name} is a vision-language model and {why}: --emit trl writes its text-only training"
            " (language model LoRA/full, no images) on one GPU, DDP, ZeRO or device_map"
        )
        out.append(Refusal(field="emit", code="vision_model", text=text))
    return out


def layout_refusals(fw: Framework, setup: Setup) -> list[Refusal]:
    """A parallel layout the trainer is not emitted for."""
    if setup.parallel in fw.layouts:
        return []
    text = f"{fw.name}: launch configs for {setup.parallel} are not emitted yet; plan with --parallel none or ddp"
    return [Refusal(field="emit", code="layout", text=text)]


_registry: dict[str, Framework] = {}


def register(fw: Framework) -> Framework:
    """Add ``fw`` to the registry under its name (a name is registered once)."""
    if not fw.name:
        raise ValueError("a framework needs a name")
    if fw.name in _registry and _registry[fw.name] is not fw:
        raise ValueError(f"a framework named {fw.name!r} is registered already")
    _registry[fw.name] = fw
    return fw


def framework(name: str) -> Framework:
    """The registered framework ``name``, or a one-line error naming those there are."""
    fw = _registry.get(name)
    if fw is None:
        raise VramplanError("trainer", f"unknown trainer {name!r}; trainers: {', '.join(names())}")
    return fw


def names() -> tuple[str, ...]:
    """Every registered framework's name, sorted."""
    return tuple(sorted(_registry))


@cache
def installed_version(package: str) -> str | None:
    """The version of ``package`` installed beside vramplan, or None (read from its metadata:
    nothing is imported)."""
    from importlib import metadata

    if not package:
        return None
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def outside_established(fw: Framework, version: str | None) -> bool:
    """``version`` is not of the release series ``fw``'s policy was read from (a missing
    version is not: the user may plan before installing)."""
    if version is None or not fw.established:
        return False
    series = fw.established.split(".")
    return version.split(".")[: len(series)] != series
