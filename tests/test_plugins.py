"""The two plug-in axes together: a toy model family (tests/toy_family.py) and a toy trainer
(tests/toy_trainer.py), each one new module with one ``register`` call, and a plan made with
both. Each moves the numbers the way the one thing it declares says, and nothing else.

- the family reads a Llama config but keeps attention's q and k as views of one fused buffer
  (``qkv_split_views``): A·t·(q + k) more saved bytes a layer (memory/activations.py);
- the trainer keeps LoRA adapters in bf16 (``Policy.adapter``): 2 bytes a trainable parameter
  fewer in the weights, 2 x 2 in AdamW's moments (torch keeps them in the param's dtype).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import ModuleType

import pytest

from vramplan import plan
from vramplan.arch import registry
from vramplan.errors import VramplanError
from vramplan.models import models_dir

TESTS = Path(__file__).parent


@pytest.mark.parametrize("module", ["toy_family.py", "toy_trainer.py"])
def test_each_toy_is_one_module_with_one_register_call(module: str) -> None:
    tree = ast.parse((TESTS / module).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "register"]
    assert len(calls) == 1
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("tests") for m in imports)  # nothing else of the tests is needed


def test_a_plan_with_the_toy_family_and_the_toy_trainer(
    toy_family: ModuleType, toy_trainer: ModuleType, tmp_path: Path
) -> None:
    cfg = json.loads((models_dir() / "llama-3.2-1b" / "config.json").read_text())
    paths = {}
    for model_type in ("llama", "toyllama"):
        paths[model_type] = tmp_path / model_type / "config.json"
        paths[model_type].parent.mkdir()
        paths[model_type].write_text(json.dumps({**cfg, "model_type": model_type}))
    fields = dict(method="lora", precision="bf16", grad_checkpointing=False, seq_len=512, micro_batch=1)
    toy = plan(str(paths["toyllama"]), "4090", trainer="toy", **fields)
    both = plan(str(paths["llama"]), "4090", trainer="hf", **fields)  # the loop the toy policy builds on
    assert (toy.trainer, both.trainer) == ("toy", "hf")
    assert toy.setup == both.setup
    assert toy.peak.phase == both.peak.phase == "backward_start"
    spec = toy_family.FAMILY.read("toy", {**cfg, "model_type": "toyllama"}, "config.json")
    n = toy.trainable_params
    assert n == both.trainable_params > 0
    kept = spec.num_layers * 2 * 512 * (spec.q_dim + spec.kv_dim)  # bf16 (A = 2), t = 512 tokens
    moved = {
        "activations/saved": kept,  # the family's capability
        "weights/trainable": -2 * n,  # the trainer's policy: fp32 -> bf16 adapters
        "optimizer/adamw": -2 * 2 * n,
    }
    for term, delta in moved.items():
        assert toy.terms[term] - both.terms[term] == delta, term
    same = set(toy.terms) - set(moved) - {"overhead/allocator_slack", "overhead/logits_segment"}
    assert {k: toy.terms[k] for k in same} == {k: both.terms[k] for k in same}
    assert toy.peak.allocated_bytes - both.peak.allocated_bytes == sum(moved.values())


def test_an_unknown_trainer_is_refused_naming_those_there_are() -> None:
    with pytest.raises(VramplanError) as exc:
        plan("qwen2.5-0.5b", "4090", trainer="nosuch")
    assert exc.value.field == "trainer" and "hf" in str(exc.value) and "trl" in str(exc.value)


def test_the_toy_family_is_gone_after_its_test() -> None:
    assert registry.family("toyllama") is None
