"""Model families as a plug-in axis (vramplan/arch/): family knowledge stays in arch/, every
family reads the catalog configs of its types with the capabilities the configs say, and a
toy family added as one module plus its ``register`` call is planned."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import pytest

import vramplan
from vramplan import arch, plan
from vramplan.arch import registry
from vramplan.models import load_model, models_dir
from vramplan.spec import ModelSpec, VisionSpec

ROOT = Path(vramplan.__file__).parent


def catalog() -> dict[str, dict[str, Any]]:
    return {d.name: json.loads((d / "config.json").read_text()) for d in sorted(models_dir().iterdir())}


CATALOG = catalog()
SPECS = {name: load_model(name) for name in CATALOG}
MODEL_TYPES = set(arch.SUPPORTED_MODEL_TYPES)
VISION_KINDS = set(get_args(VisionSpec.model_fields["kind"].annotation))
LINEAR_NAMES = {
    lin.name
    for spec in SPECS.values()
    for lin in spec.attention + spec.mlp + spec.moe_mlp + (spec.vision.blocks if spec.vision else ())
}
#: the part before the dot of a dotted name ("experts." of "experts.down_proj")
LINEAR_PREFIXES = {name.split(".")[0] + "." for name in LINEAR_NAMES if "." in name}
LAYOUT_FIELDS = ("attention", "mlp", "moe_mlp", "blocks")


# -- (a) no family knowledge outside arch/ ------------------------------------------------


def _strings(node: ast.expr) -> list[str]:
    """The string literals ``node`` is or holds (a tuple, list or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def _is_model_type(node: ast.expr) -> bool:
    """``x.model_type``, a variable ``model_type``, ``cfg["model_type"]``, ``cfg.get("model_type")``."""
    if isinstance(node, ast.Attribute):
        return node.attr == "model_type"
    if isinstance(node, ast.Name):
        return node.id == "model_type"
    if isinstance(node, ast.Subscript):
        return _strings(node.slice) == ["model_type"]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and _strings(node.args[0]) == ["model_type"]
    return False


def _is_layout_len(node: ast.expr) -> bool:
    """``len(spec.attention)`` and the like: a family inferred from how many linears it has."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "len"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Attribute)
        and node.args[0].attr in LAYOUT_FIELDS
    )


def _family_word(s: str) -> str | None:
    if s in MODEL_TYPES:
        return f"model_type {s!r}"
    if s in VISION_KINDS:
        return f"vision kind {s!r}"
    if s in LINEAR_NAMES or s in LINEAR_PREFIXES:
        return f"linear name {s!r}"
    if s in CATALOG:
        return f"catalog model {s!r}"
    return None


def family_tests(source: str) -> list[str]:
    """Every place ``source`` tells families apart itself: a comparison or membership test
    against a model_type, a vision kind, a linear's name or a catalog model's name (or on a
    model_type at all, or on how many linears a layer has), a ``startswith``/``endswith`` on a
    linear's name, a table keyed by model_type, a list of model types, and a lookup keyed by a
    model_type. Each as "line: what"."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                words = [w for w in map(_family_word, _strings(operand)) if w]
                found += [f"{line}: compares with {w}" for w in words]
                if _is_model_type(operand):
                    found.append(f"{line}: compares a model_type")
                if _is_layout_len(operand):
                    found.append(f"{line}: compares how many linears a layer has")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith"):
                words = [w for arg in node.args for w in map(_family_word, _strings(arg)) if w]
                found += [f"{line}: {node.func.attr} {w}" for w in words]
            if node.func.attr == "get" and node.args and _is_model_type(node.args[0]):
                found.append(f"{line}: a lookup keyed by a model_type")
        elif isinstance(node, ast.Dict):
            keys = [s for k in node.keys if k is not None for s in _strings(k) if s in MODEL_TYPES]
            if keys:
                found.append(f"{line}: a table keyed by model_type ({', '.join(keys)})")
        elif isinstance(node, ast.Subscript) and _is_model_type(node.slice):
            found.append(f"{line}: a lookup keyed by a model_type")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            types = [s for s in _strings(node) if s in MODEL_TYPES]
            if types:
                found.append(f"{line}: a list of model types ({', '.join(types)})")
    return found


REINTRODUCED = [
    'if spec.model_type == "gemma2":\n    pass',
    'fused = any(lin.name == "qkv_proj" for lin in spec.attention)',
    'ok = mt in ("qwen2", "qwen2_vl", "qwen2_5_vl")',
    'ok = "phi3" != config["model_type"]',
    "copies = 3 if len(spec.attention) > 2 else 1",
    'routed = lin.name.startswith("experts.")',
    'resampler = spec.vision.kind == "qwen-vl"',
    'DECODER_LAYER = {"llama": "LlamaDecoderLayer"}',
    "layer = DECODER_LAYER.get(ctx.model_type)",
    "layer = DECODER_LAYER[spec.model_type]",
    "same = spec.model_type == other",
    'VLM_TYPES = ("qwen2_vl", "qwen2_5_vl")',
    'targets = "qkv_proj" if model == "phi-3-mini" else QV',
]
CLEAN = [
    "fused = spec.qkv_split_views",
    'sdpa = setup.attention != "eager"',
    'print(f"{spec.model_type}: eager")',
    'hf = AutoConfig.for_model(config["model_type"])',
    "n = len(spec.moe.layers)",
]


@pytest.mark.parametrize("snippet", REINTRODUCED)
def test_the_check_finds_a_reintroduced_family_test(snippet: str) -> None:
    assert family_tests(snippet), snippet


@pytest.mark.parametrize("snippet", CLEAN)
def test_the_check_passes_capability_reads(snippet: str) -> None:
    assert family_tests(snippet) == []


def test_no_module_outside_arch_tells_families_apart() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sorted(ROOT.rglob("*.py"))
        if "arch" not in path.relative_to(ROOT).parts[:1]
        for hits in [family_tests(path.read_text())]
        if hits
    }
    assert found == {}


# -- (b) every family reads the catalog, with the capabilities its configs say ------------


def test_every_family_reads_every_catalog_config_of_its_types() -> None:
    read_by: dict[str, int] = {}
    for name, cfg in CATALOG.items():
        fam = arch.family(cfg["model_type"])
        assert fam is not None, name
        assert fam.read(name, cfg, "config.json") == SPECS[name]
        read_by[fam.name] = read_by.get(fam.name, 0) + 1
    assert set(read_by) == {f.name for f in arch.BUILT_IN} == {f.name for f in arch.families()}


#: MoE model types whose fused experts PEFT's all-linear leaves alone
NO_PEFT_CONVERSION = {"gpt_oss", "llama4"}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_capabilities_match_the_config(name: str) -> None:
    cfg, spec = CATALOG[name], SPECS[name]
    fused_qkv = any(lin.out_features == spec.q_dim + 2 * spec.kv_dim for lin in spec.attention)
    assert spec.fused_qkv == fused_qkv
    assert spec.fused_gate_up == any(lin.out_features == 2 * spec.intermediate_size for lin in spec.mlp)
    assert spec.qkv_split_views <= spec.fused_qkv  # views of a fused output need a fused projection
    model_class = cfg["architectures"][0]
    ships = model_class.endswith(("ForCausalLM", "ForConditionalGeneration"))  # QWenLMHeadModel: remote code
    assert spec.remote_code == (not ships)
    assert spec.transformers_module == (cfg["model_type"] if ships else "")
    if spec.decoder_layer:  # transformers names the layer class after the model class
        base = model_class.removesuffix("ForCausalLM").removesuffix("ForConditionalGeneration")
        text_type = str(cfg.get("text_config", {}).get("model_type", ""))  # a VLM's text model (Mistral 3's)
        # a VLM's text layer: Llama 4's Llama4TextDecoderLayer, Mistral 3's MistralDecoderLayer
        layers = (base + "DecoderLayer", base + "TextDecoderLayer", text_type.capitalize() + "DecoderLayer")
        assert spec.decoder_layer in layers
    else:  # FSDP wrapping is planned for every text model transformers ships
        assert spec.vision is not None or spec.remote_code
    assert spec.attn_logit_softcapping == cfg.get("attn_logit_softcapping")
    assert spec.final_logit_softcapping == cfg.get("final_logit_softcapping")
    # PEFT's all-linear reaches fused experts only through its transformers-5 conversion map
    # (peft 0.21.2 utils/transformers_weight_conversion.py), which names no GPT-OSS target
    peft_maps = cfg["model_type"] not in NO_PEFT_CONVERSION
    assert spec.moe is None or all(
        lin.param_target_rank
        == ((2 if lin.out_features == 2 * spec.moe.expert_intermediate_size else 1) if peft_maps else 0)
        for lin in spec.moe_mlp
        if not lin.nn_linear  # shared experts (DeepSeek) are nn.Linear layers, adapted as such
    )
    # videos go through a dynamic-resolution tower (Qwen3-VL's video processor is not planned: images only)
    dynamic = spec.vision is not None and spec.vision.image_size == 0 == spec.vision.longest_edge
    assert spec.vision is None or spec.vision.videos <= dynamic
    qwen3_vl = spec.model_type in ("qwen3_vl", "qwen3_vl_moe")
    assert spec.vision is None or spec.vision.videos or not dynamic or qwen3_vl


def test_family_capabilities_spot_checks() -> None:
    phi3, gemma2, qwen7, qwen_vl = (SPECS[n] for n in ("phi-3-mini", "gemma-2-9b", "qwen-7b", "qwen-vl-chat"))
    assert phi3.fused_qkv and phi3.fused_gate_up and phi3.qkv_split_views and phi3.decoder_layer == "Phi3DecoderLayer"
    # Gemma2Config defaults tie_word_embeddings to True; the published config leaves the key out
    assert "tie_word_embeddings" not in CATALOG["gemma-2-9b"] and gemma2.tie_word_embeddings
    assert gemma2.attn_logit_softcapping == 50.0 and gemma2.final_logit_softcapping == 30.0
    assert gemma2.norm_scale_fp32 and gemma2.norms_per_layer == 4 and "sdpa" not in gemma2.attentions
    assert qwen7.remote_code and qwen7.fused_qkv and not qwen7.qkv_split_views and not qwen7.transformers_module
    assert qwen_vl.remote_code and qwen_vl.vision is not None and qwen_vl.vision.abs_pos_rows == 256
    assert not qwen_vl.vision.videos and qwen_vl.vision.num_queries == 256
    assert SPECS["qwen2-vl-7b"].vision is not None and SPECS["qwen2-vl-7b"].vision.videos
    assert SPECS["qwen3-30b-a3b"].decoder_layer == "Qwen3MoeDecoderLayer" and SPECS["qwen3-8b"].qk_norm
    assert SPECS["mixtral-8x7b"].decoder_layer == "MixtralDecoderLayer"
    templates = {n: dict(SPECS[n].chat_templates).get("llamafactory") for n in SPECS}
    # emit/llamafactory.py before the families declared them: llama by vocabulary (Yi's 64k)
    assert templates["llama-2-7b"] == "llama2" and templates["llama-3.1-8b"] == "llama3"
    assert templates["yi-34b"] == "yi" and templates["qwen2.5-7b"] == "qwen" and templates["phi-3-mini"] == "phi"
    assert templates["qwen2.5-vl-7b"] == "qwen2_vl" and templates["mixtral-8x7b"] == "mistral"


def test_a_model_type_read_by_another_family_is_refused() -> None:
    with pytest.raises(ValueError, match="llama"):
        arch.register(arch.Family("other", ("llama",), arch.family("llama").read))  # type: ignore[union-attr]


# -- (c) a toy family: one new module and its register() call -----------------------------


def test_the_toy_family_is_one_module_with_one_register_call() -> None:
    tree = ast.parse((Path(__file__).parent / "toy_family.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "register"]
    assert len(calls) == 1


def test_a_toy_family_is_planned(toy_family: ModuleType, tmp_path: Path) -> None:
    cfg = dict(CATALOG["llama-3.2-1b"])
    paths = {}
    for model_type in ("llama", "toyllama"):
        (tmp_path / model_type).mkdir()
        paths[model_type] = tmp_path / model_type / "config.json"
        paths[model_type].write_text(json.dumps({**cfg, "model_type": model_type}))
    assert arch.family("toyllama") is toy_family.FAMILY
    fields = dict(method="lora", precision="bf16", grad_checkpointing=False, seq_len=512, micro_batch=1)
    toy, llama = (plan(str(paths[mt]), "4090", **fields) for mt in ("toyllama", "llama"))
    spec: ModelSpec = toy_family.FAMILY.read("toy", {**cfg, "model_type": "toyllama"}, "config.json")
    assert spec.qkv_split_views and spec.decoder_layer == "LlamaDecoderLayer"
    # the one capability it declares: attention keeps the fused buffer's q and k parts, A·t·(q + k)
    # bytes a layer (memory/activations.py attention_core_bytes), bf16 (A = 2), t = 512 tokens
    kept = spec.num_layers * 2 * 512 * (spec.q_dim + spec.kv_dim)
    assert toy.terms["activations/saved"] - llama.terms["activations/saved"] == kept
    assert {k: v for k, v in toy.terms.items() if k != "activations/saved"} == {
        k: v for k, v in llama.terms.items() if k != "activations/saved"
    }
    assert toy.params == llama.params


def test_the_toy_family_is_gone_after_its_test() -> None:
    assert arch.family("toyllama") is None and "toyllama" not in registry.supported_model_types()
