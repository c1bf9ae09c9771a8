"""The transformers major version a plan assumes (vramplan/stack.py): where it comes from, how it
reaches a mixture of experts' ModelSpec, what it moves, and the note that says it."""

from __future__ import annotations

from importlib import metadata
from unittest import mock

import pytest

from vramplan import plan
from vramplan.arch import for_transformers
from vramplan.cli import main
from vramplan.errors import VramplanError
from vramplan.memory.trainable import lora_linears
from vramplan.memory.weights import quantized_weight_params
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.setup import make_setup
from vramplan.stack import transformers_major
from vramplan.units import GIB


def _installed(release: str | None) -> mock._patch[mock.MagicMock]:
    return mock.patch("vramplan.stack.installed_transformers", return_value=release)


@pytest.mark.analytic
@pytest.mark.parametrize(
    ("given", "release", "want"),
    [
        (None, "4.57.6", (4, "installed")),
        (None, "5.25.0", (5, "installed")),
        (None, None, (5, "default")),
        (None, "6.0.0", (5, "default")),
        (4, "5.25.0", (4, "given")),
        ("5", "4.57.6", (5, "given")),
    ],
)
def test_major_given_installed_or_default(given: object, release: str | None, want: tuple[int, str]) -> None:
    with _installed(release):
        assert transformers_major(given) == want


@pytest.mark.analytic
def test_installed_is_read_from_metadata() -> None:
    try:
        release = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        pytest.skip("transformers is not installed")
    assert transformers_major()[0] == int(release.split(".")[0])


@pytest.mark.analytic
@pytest.mark.parametrize("bad", [3, 6, "x", "4.57", True, 4.0, [4]])
def test_bad_major_names_the_field(bad: object) -> None:
    with pytest.raises(VramplanError) as err:
        plan("mixtral-8x7b", "h100", transformers=bad)  # type: ignore[arg-type]
    assert err.value.field == "transformers"
    assert "\n" not in str(err.value)


@pytest.mark.analytic
def test_cli_bad_major_exits_2_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qwen2.5-7b", "--gpu", "h100", "--transformers", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "transformers" in err


@pytest.mark.analytic
def test_dense_models_do_not_depend_on_it() -> None:
    spec = load_model("qwen2.5-7b")
    assert spec.transformers == 0 and for_transformers(spec, 4) is spec
    a = plan("qwen2.5-7b", "h100", transformers=4, method="qlora")
    b = plan("qwen2.5-7b", "h100", transformers=5, method="qlora")
    assert a == b
    assert not [n for n in a.notes if n.code == "stack.transformers"]


@pytest.mark.analytic
@pytest.mark.parametrize("model", ["mixtral-8x7b", "qwen3-30b-a3b"])
def test_moe_layouts(model: str) -> None:
    """transformers 4: an nn.Linear router and per-expert nn.Linear projections; 5: two fused
    parameters and a bare router weight. The parameter count is the same."""
    t5 = load_model(model)
    t4 = for_transformers(t5, 4)
    assert (t5.transformers, t4.transformers) == (5, 4)
    assert for_transformers(t4, 5) == t5
    assert param_counts(t4) == param_counts(t5)
    assert all(lin.nn_linear for lin in t4.moe_mlp) and not any(lin.nn_linear for lin in t5.moe_mlp)
    assert [lin.routed for lin in t4.moe_mlp] == [False, True, True, True]
    assert t5.moe is not None
    experts = sum(lin.weight_params for lin in t5.moe_mlp if lin.count > 1) * len(t5.moe.layers)
    router = t5.hidden_size * t5.moe.num_experts * len(t5.moe.layers)
    # bitsandbytes: 5 leaves experts and router 16-bit; 4 quantizes both
    assert quantized_weight_params(t4) - quantized_weight_params(t5) == experts + router
    setup = make_setup(method="lora", lora_targets="all-linear", lora_dropout=0.0)
    layer = t5.moe.layers[0]
    assert {lin.name for lin in lora_linears(t4, setup, layer)} >= {lin.name for lin in t4.moe_mlp}
    assert not {lin.name for lin in lora_linears(t5, setup, layer)} & {lin.name for lin in t5.moe_mlp}


@pytest.mark.analytic
def test_mixtral_qlora_weights_halve_and_more_under_transformers_4() -> None:
    """Mixtral-8x7B QLoRA nf4: transformers 5 keeps the experts unquantized (fp32 after PEFT's
    k-bit upcast), transformers 4 packs them to 4 bits."""
    got = {}
    for major in (4, 5):
        p = plan("mixtral-8x7b", "h100", transformers=major, method="qlora", quant="bnb-nf4", micro_batch=1)
        got[major] = sum(v for k, v in p.terms.items() if k.startswith("weights/"))
        note = next(n for n in p.notes if n.code == "stack.transformers")
        assert note.data == {"transformers": major, "source": "given"}
    assert got[5] > 2 * got[4]
    assert 24 < got[4] / GIB < 26 and 165 < got[5] / GIB < 175


@pytest.mark.analytic
def test_dropout_under_all_linear_only_refused_for_wrapped_experts() -> None:
    """transformers 5's ParamWrapper refuses dropout; transformers 4's per-expert LoRA layers take it."""
    with pytest.raises(VramplanError) as err:
        plan("qwen3-30b-a3b", "h100", transformers=5, method="lora", lora_targets="all-linear", lora_dropout=0.05)
    assert err.value.field == "lora_dropout"
    p = plan("qwen3-30b-a3b", "h100", transformers=4, method="lora", lora_targets="all-linear")
    assert p.setup.lora_dropout == 0.05
    assert not [n for n in p.notes if n.code == "moe.lora_dropout"]


@pytest.mark.analytic
@pytest.mark.parametrize(("release", "source"), [("4.57.6", "installed"), (None, "default")])
def test_note_says_which_and_why(release: str | None, source: str) -> None:
    with _installed(release):
        p = plan("qwen3-30b-a3b", "h100", method="lora")
    note = next(n for n in p.notes if n.code == "stack.transformers")
    assert note.data == {"transformers": 4 if release else 5, "source": source}
    assert f"transformers {note.data['transformers']}" in note.text


@pytest.mark.analytic
def test_auto_gpus_keeps_the_major() -> None:
    p = plan("mixtral-8x7b", "4090", transformers=4, method="qlora", num_gpus="auto")
    assert next(n for n in p.notes if n.code == "stack.transformers").data["transformers"] == 4
