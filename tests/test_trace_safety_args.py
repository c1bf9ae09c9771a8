"""`vramplan trace` refuses what it cannot run before torch is imported, builds the Setup the
planner would, and writes its files whole or not at all. Analytic: nothing here imports
torch (the subprocesses check that they did not either)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vramplan.errors import VramplanError
from vramplan.files import write_files_atomically
from vramplan.limits import MAX_STEPS
from vramplan.planner import family_defaults, plan
from vramplan.trace.preflight import config_kwargs, resolve_setup

ROOT = Path(__file__).resolve().parents[1]

#: flags that must be refused (exit 2, one line naming the field) without importing torch.
REFUSED = {
    "bad_flag": (["qwen2.5-7b", "--bad"], "unrecognized arguments"),
    "steps_zero": (["qwen2.5-7b", "--steps", "0"], "--steps"),
    "steps_unbounded_hang": (["qwen2.5-7b", "--steps", "100000000"], f"1 to {MAX_STEPS}"),
    "parallel_after_torch_import": (["qwen2.5-7b", "--parallel", "ddp"], "parallel"),
    "gpus": (["qwen2.5-7b", "--gpus", "2", "--parallel", "fsdp"], "one process"),
    "nodes": (["qwen2.5-7b", "--gpus", "1", "--nodes", "2", "--parallel", "ddp"], "one process"),
    "plot_missing_folder_after_trace": (["qwen2.5-7b", "--plot", "{tmp}/missing/t.png"], "plot"),
    "plot_suffix": (["qwen2.5-7b", "--plot", "{tmp}/t.pdf"], "plot"),
    "report_missing_folder": (["qwen2.5-7b", "--report", "{tmp}/missing/t.html"], "report"),
    "report_is_plot": (["qwen2.5-7b", "--plot", "{tmp}/t.html", "--report", "{tmp}/t.html"], "same file"),
    "report_bad_gpu": (["qwen2.5-7b", "--report", "{tmp}/t.html", "--gpu", "nosuchcard"], "gpu"),
    "gemma2_sdpa_pinned": (["gemma-2-9b", "--attention", "sdpa"], "attention"),
    "gemma2_flash_on_cpu": (["gemma-2-9b", "--attention", "flash-attn-2"], "attention"),
    "moe_all_linear_dropout_pinned": (
        ["qwen3-30b-a3b", "--lora-targets", "all-linear", "--lora-dropout", "0.1"],
        "lora_dropout",
    ),
    "unknown_lora_target": (["qwen2.5-7b", "--lora-targets", "foo_proj"], "lora_targets"),
    "grpo": (["qwen2.5-7b", "--rl", "grpo"], "rl"),
    "inference": (["qwen2.5-7b", "--method", "inference"], "method"),
    "remote_code": (["qwen-7b"], "remote-code"),
    "unknown_model": (["qwen9-7b"], "model"),
    "gptq_qlora": (["qwen2.5-7b", "--method", "qlora", "--quant", "gptq-int4"], "quant"),
    "cuda_only_optimizer": (["qwen2.5-7b", "--optimizer", "paged-adamw-8bit"], "optimizer"),
    "vlm_without_images": (["qwen2-vl-2b"], "image-size"),
    "real_cpu_too_big": (["qwen2.5-72b", "--real-cpu", "--method", "full"], "real CPU run needs"),
}

SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from vramplan.cli import main
    out = {}
    for name, argv in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
        heavy = sorted(m for m in ("torch", "transformers", "peft", "bitsandbytes") if m in sys.modules)
        out[name] = {"code": code, "stderr": err.getvalue(), "heavy": heavy}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every refusal run in one fresh process, in order; each records the modules loaded so far."""
    tmp = tmp_path_factory.mktemp("refusals")
    cases = {name: ["trace", *(a.format(tmp=tmp) for a in argv)] for name, (argv, _) in REFUSED.items()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_before_torch_is_imported(refusals: dict[str, dict], name: str) -> None:
    got = refusals[name]
    assert got["code"] == 2, got
    assert got["heavy"] == [], f"{name} imported {got['heavy']} before refusing"
    lines = got["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vramplan: error:"), got["stderr"]
    assert REFUSED[name][1] in lines[0]


def test_measure_refuses_plot_before_torch(tmp_path: Path) -> None:
    """measure keeps no timeline to draw: --plot is refused before anything runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = SCRIPT
    cases = {"m": ["measure", "qwen2.5-0.5b", "--plot", str(tmp_path / "m.png")]}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True, env=env)
    got = json.loads(proc.stdout)["m"]
    assert got["code"] == 2 and "plot" in got["stderr"] and got["heavy"] == []


def test_record_to_an_unwritable_place_is_refused_before_the_run(tmp_path: Path, capsys) -> None:
    from vramplan.cli import main

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    assert main(["trace", "qwen2.5-0.5b", "--record", str(blocker / "measured" / "runs.jsonl")]) == 2
    assert "record" in capsys.readouterr().err


def test_plan_refuses_sdpa_for_gemma2() -> None:
    """transformers refuses sdpa for Gemma-2 (Gemma2PreTrainedModel._supports_sdpa = False,
    models/gemma2/modeling_gemma2.py; PreTrainedModel._sdpa_can_dispatch raises): so does the plan."""
    with pytest.raises(VramplanError) as err:
        plan("gemma-2-9b", "a100-80g", attention="sdpa")
    assert err.value.field == "attention" and "eager" in str(err.value)


def test_gemma2_plan_defaults_to_eager_and_says_so() -> None:
    p = plan("gemma-2-9b", "a100-80g", method="lora")
    assert p.setup.attention == "eager"
    assert any(n.text.startswith("gemma2: attention eager") for n in p.notes)
    assert all(a.setup.attention == "eager" for a in p.alternatives)
    assert plan("gemma-2-9b", "a100-80g", method="lora", attention="flash-attn-2").setup.attention == "flash-attn-2"


def test_other_families_keep_sdpa() -> None:
    assert plan("qwen2.5-7b", "a100-80g", method="lora").setup.attention == "sdpa"


@pytest.mark.parametrize(
    ("model", "flags"),
    [
        ("gemma-2-9b", {}),  # the trace crashed: transformers refuses sdpa for Gemma-2
        ("qwen3-30b-a3b", {}),  # the trace crashed: LoRA dropout on PEFT's ParamWrapper
        ("qwen3-30b-a3b", {"lora_targets": "all-linear"}),
        ("qwen3-30b-a3b", {"method": "qlora"}),
        ("mixtral-8x7b", {"lora_targets": "all-linear"}),
        ("qwen2.5-7b", {"grad_checkpointing": False}),
    ],
)
def test_trace_builds_the_setup_the_planner_would(model: str, flags: dict) -> None:
    """The fields the model's family decides (attention, MoE LoRA targets and dropout) come
    out of the trace's resolution as they come out of plan()."""
    setup, notes = resolve_setup(model, {"method": "lora", **flags})
    planned = plan(model, "h100", **{"method": "lora", **flags})
    for field in ("attention", "lora_targets", "lora_dropout", "quant"):
        assert getattr(setup, field) == getattr(planned.setup, field), field
    assert set(notes) <= {n.text for n in planned.notes}


def test_family_defaults_leave_pinned_choices_alone() -> None:
    from vramplan.models import load_model

    pinned, notes = family_defaults(load_model("qwen3-30b-a3b"), {"lora_targets": "q_proj", "lora_dropout": 0.1})
    assert pinned == {"lora_targets": "q_proj", "lora_dropout": 0.1} and notes == []
    pinned, notes = family_defaults(load_model("gemma-2-9b"), {"attention": "eager"})
    assert pinned == {"attention": "eager"} and notes == []


def test_odd_config_keys_are_left_out() -> None:
    """PretrainedConfig.__init__ setattr()s every unknown key: ``__class__`` raises TypeError,
    ``__dict__`` wipes the instance's attributes (transformers configuration_utils.py)."""
    config = {
        "model_type": "qwen2",
        "auto_map": {"AutoConfig": "remote.Config"},
        "hidden_size": 64,
        "__class__": "x",
        "__dict__": {},
        "a-b": 1,
        "1x": 2,
        "class": 3,
        "_attn_implementation": "sdpa",
        "id2label": {"0": "a", "__class__": "y"},
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "text_config": {"hidden_size": 8, "__dict__": {}, "not-an-identifier": 1},
    }
    kept, dropped = config_kwargs(config)
    assert kept == {
        "hidden_size": 64,
        "id2label": {"0": "a"},
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "text_config": {"hidden_size": 8},
    }
    assert set(dropped) == {
        "__class__",
        "__dict__",
        "a-b",
        "1x",
        "class",
        "_attn_implementation",
        "id2label.__class__",
        "text_config.__dict__",
        "text_config.not-an-identifier",
    }


def test_files_appear_together(tmp_path: Path) -> None:
    a, b = tmp_path / "a.html", tmp_path / "b.png"
    assert write_files_atomically([(a, "page"), (b, lambda p: p.write_bytes(b"png"))]) == [a, b]
    assert a.read_text() == "page" and b.read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.png"]


def test_a_failed_second_file_leaves_neither(tmp_path: Path) -> None:
    a, b = tmp_path / "a.html", tmp_path / "b.png"

    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError):
        write_files_atomically([(a, "page"), (b, broken)])
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_survives_a_failed_rewrite(tmp_path: Path) -> None:
    a = tmp_path / "a.html"
    a.write_text("old")

    def broken(path: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(VramplanError, match="No space left"):
        write_files_atomically([(a, broken)], field="report")
    assert a.read_text() == "old" and list(tmp_path.iterdir()) == [a]


KILLED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from vramplan.plot import plot
    from vramplan.trace.result import TimelinePoint, TraceResult
    from vramplan.setup import Setup

    real_savefig = Figure.savefig

    def slow_savefig(self, fname, *args, **kwargs):
        # write half the PNG, then hang: the test kills the process here
        import io
        buf = io.BytesIO()
        real_savefig(self, buf, *args, format="png", **kwargs)
        with open(fname, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
        print("half written", flush=True)
        time.sleep(120)

    Figure.savefig = slow_savefig
    points = [TimelinePoint(index=i, step=0, phase="forward", by_creator={"forward": i * 2**20}) for i in range(50)]
    result = TraceResult(
        model="tiny", setup=Setup(), backend="trace", steps=1, peak_bytes=49 * 2**20, peak_phase="forward",
        peak_step=0, by_kind={}, phases={}, largest=[], timeline=points, seconds=1.0, versions={},
    )
    plot(result, sys.argv[1])
    """
)


def test_a_kill_during_savefig_leaves_no_partial_png(tmp_path: Path) -> None:
    """SIGKILL while matplotlib writes the PNG: nothing appears under the final name (the
    half-written file is a hidden temporary)."""
    target = tmp_path / "timeline.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "half written", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".vramplan-") for p in leftovers) and leftovers, leftovers
