"""Remote-code families (Qwen v1, Qwen-VL) are emitted for ms-swift and LLaMA-Factory, whose own model
loaders run the repository's code, and still refused for trl and axolotl (issue 18, item 7). vramplan
reads their config.json only; the emitted files tell the trainer, and the user, that it runs that code."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.frameworks import framework
from vramplan.models import load_model

pytestmark = pytest.mark.analytic

MODELS = ("qwen-7b", "qwen-14b", "qwen-vl-chat")


@pytest.mark.parametrize("target", ["trl", "axolotl"])
@pytest.mark.parametrize("model", MODELS)
def test_trl_and_axolotl_still_refuse_remote_code(model: str, target: str) -> None:
    spec = load_model(model)
    p = plan(model, gpu="a100-80g", method="lora", trainer=target)
    (refusal, *_) = framework(target).supports(p.setup, spec)
    assert refusal.code == "remote_code" and refusal.field == "emit"
    assert f"{target}: {model} is a remote-code architecture" in refusal.text
    assert "--emit swift or llamafactory" in refusal.text
    with pytest.raises(VramplanError, match="remote-code architecture"):
        emit(p, target)


@pytest.mark.parametrize("model", MODELS)
def test_swift_runs_them_by_model_type_and_says_it_runs_their_code(model: str) -> None:
    out = emit(plan(model, gpu="a100-80g", method="lora", trainer="swift"), "swift")
    run = out.files["run.sh"]
    want = "qwen_vl" if model == "qwen-vl-chat" else "qwen"
    assert f"--model_type {want} \\\n" in run
    assert "# REMOTE CODE:" in run and "trust_remote_code on (its default)" in run
    assert "--target_modules all-linear" in run  # swift's own: the language model only on qwen_vl
    assert ("text-only training" in run) == (model == "qwen-vl-chat")


@pytest.mark.parametrize("model", MODELS)
def test_llamafactory_is_told_to_trust_the_repository(model: str) -> None:
    out = emit(plan(model, gpu="a100-80g", method="lora", trainer="llamafactory"), "llamafactory")
    yaml = out.files["train.yaml"]
    assert "\ntrust_remote_code: true  #" in yaml and "template: qwen  #" in yaml
    assert "# REMOTE CODE:" in yaml and "# REMOTE CODE:" in out.files["run.sh"]
    target = next(line for line in yaml.splitlines() if line.startswith("lora_target:"))
    if model == "qwen-vl-chat":  # the tower's mlp.c_proj shares the short name: the language model's in full
        names = target.split(":", 1)[1].strip().strip('"').split(",")
        assert names[:4] == ["c_attn", "attn.c_proj", "w1", "w2"]
        assert names[4:] == [f"transformer.h.{i}.mlp.c_proj" for i in range(32)]
    else:
        assert target == "lora_target: all"


def test_named_targets_the_tower_does_not_share_pass_as_written() -> None:
    p = plan(
        "qwen-vl-chat", gpu="a100-80g", method="lora", lora_targets="c_attn,attn.c_proj,w1,w2", trainer="llamafactory"
    )
    yaml = emit(p, "llamafactory").files["train.yaml"]
    assert 'lora_target: "c_attn,attn.c_proj,w1,w2"\n' in yaml


def test_no_other_family_is_told_to_trust_remote_code() -> None:
    for target in ("swift", "llamafactory"):
        out = emit(plan("qwen2.5-7b", gpu="a100-80g", method="lora", trainer=target), target)
        text = "".join(out.files.values())
        assert "trust_remote_code" not in text and "REMOTE CODE" not in text and "--model_type" not in text


@pytest.mark.parametrize("target", ["swift", "llamafactory"])
def test_qwen_vl_stays_text_only_lora(target: str) -> None:
    with pytest.raises(VramplanError, match="training with images is emitted for trl only"):
        emit(plan("qwen-vl-chat", gpu="a100-80g", method="lora", images_per_sample=1, trainer=target), target)
    with pytest.raises(VramplanError, match="emitted for LoRA/QLoRA \\(text only\\)"):
        emit(plan("qwen-vl-chat", gpu="a100-80g", method="full", trainer=target), target)


def test_swift_freeze_names_qwen_v1_layers() -> None:
    run = emit(plan("qwen-7b", gpu="a100-80g", method="freeze", trainer="swift"), "swift").files["run.sh"]
    assert "--trainable_parameters_regex '^transformer\\.h\\.(30|31)\\.'" in run
