"""A model_type no family module reads (arch/generic.py): read as a Llama-style decoder with a
margin in every phase, refused in one line where that reading cannot stand (a repository's own
code, experts, MLA, a vision tower, missing keys); the margin held against the family modules
on the whole catalog and, in the trace tier, against traced steps of decoders transformers
ships that no family module reads."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from tests.conftest import TINY_CONFIG, requires
from vramplan import plan
from vramplan.arch import generic
from vramplan.arch.registry import supported_model_types
from vramplan.errors import VramplanError
from vramplan.memory import estimate
from vramplan.memory.phases import CUDA_ONLY, traceable_bytes
from vramplan.models import catalog_names, load_config, load_model
from vramplan.setup import make_setup

SETUPS = [
    dict(method="lora"),
    dict(method="lora", grad_checkpointing=False, seq_len=1024),
    dict(method="lora", grad_checkpointing=False, seq_len=4096, micro_batch=2),
    dict(method="qlora", quant="bnb-nf4"),
    dict(method="full", precision="bf16", seq_len=1024),
]


def config_file(tmp_path: Path, **cfg: object) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_an_unread_type_plans_with_a_margin_and_says_so(tmp_path: Path) -> None:
    p = plan(config_file(tmp_path, **{**TINY_CONFIG, "model_type": "helium"}), "4090", method="lora")
    note = next(n for n in p.notes if n.code == "model.approximate")
    assert note.data == {"model_type": "helium", "margin_pct": generic.MARGIN_PCT}
    assert "no family module for helium" in note.text
    est = estimate(load_model(config_file(tmp_path, **{**TINY_CONFIG, "model_type": "helium"})), p.setup)
    held = est.allocated_bytes - est.terms["overhead/approximation"] - sum(est.terms.get(k, 0) for k in CUDA_ONLY)
    assert est.terms["overhead/approximation"] == -(-held * generic.MARGIN_PCT // 100)


def test_a_family_read_model_has_no_margin() -> None:
    p = plan("qwen2.5-7b", "4090", method="lora")
    assert "overhead/approximation" not in p.terms and all(n.code != "model.approximate" for n in p.notes)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"model_type": "internlm2", "auto_map": {"AutoModel": "modeling_internlm2.InternLM2Model"}}, "auto_map"),
        ({"model_type": "olmoe", "num_experts": 64}, "experts"),
        ({"model_type": "deepseek_v32", "kv_lora_rank": 512}, "multi-head latent attention"),  # deepseek_v2: a family
        ({"model_type": "llava", "vision_config": {"hidden_size": 1152}}, "a vision tower"),
    ],
)
def test_what_the_reading_cannot_stand_for_is_refused(tmp_path: Path, extra: dict, says: str) -> None:
    with pytest.raises(VramplanError) as err:
        load_model(config_file(tmp_path, **{**TINY_CONFIG, **extra}))
    assert err.value.field == "model_type" and says in str(err.value) and "\n" not in str(err.value)


def test_missing_keys_are_named(tmp_path: Path) -> None:
    cfg = {k: v for k, v in TINY_CONFIG.items() if k != "intermediate_size"}
    with pytest.raises(VramplanError, match="it lacks intermediate_size"):
        load_model(config_file(tmp_path, **{**cfg, "model_type": "helium"}))


def test_a_shipped_type_with_a_stale_auto_map_is_read(tmp_path: Path) -> None:
    """Phi-3's config still carries the auto_map of its remote-code days; transformers ships it."""
    spec = load_model(config_file(tmp_path, **{**TINY_CONFIG, "model_type": "helium", "auto_map": {"x": "y"}}))
    assert spec.approximate == "no family module for helium"


def test_a_vlm_wrapper_is_refused_but_its_text_model_would_be_read(tmp_path: Path) -> None:
    wrapped = {"model_type": "llava", "text_config": {**TINY_CONFIG, "model_type": "llama"}}
    with pytest.raises(VramplanError, match="a vision tower"):
        load_model(config_file(tmp_path, **{**wrapped, "vision_config": {"hidden_size": 64}}))
    assert load_model(config_file(tmp_path, **wrapped)).hidden_size == TINY_CONFIG["hidden_size"]


def _dense_catalog() -> list[str]:
    return [n for n in catalog_names() if not (s := load_model(n)).moe and not s.vision and not s.remote_code]


@pytest.mark.parametrize("name", _dense_catalog())
def test_the_margin_covers_the_reading_on_every_catalog_family(name: str) -> None:
    """Read as an unknown type, each dense catalog model's estimate (with the margin) is at least
    its family module's, which the traced grid holds within 1.5% of transformers' own step."""
    family_spec = load_model(name)
    _, cfg = load_config(name)
    spec = generic.read(name, cfg, "config.json", supported_model_types()).model_copy(update={"approximate": "x"})
    for fields in SETUPS:
        extra = {"attention": "eager"} if "sdpa" not in family_spec.attentions else {}
        setup = make_setup(**fields, **extra)
        mine, theirs = traceable_bytes(estimate(spec, setup)), traceable_bytes(estimate(family_spec, setup))
        assert mine >= theirs, (fields, mine / 2**30, theirs / 2**30)


@pytest.mark.trace
@requires("transformers")
def test_the_type_list_is_transformers_own() -> None:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    header = (generic.tables_dir() / "transformers_model_types.txt").read_text().splitlines()[0]
    if f"transformers {transformers.__version__} " not in header:
        pytest.skip(f"the list is of another transformers release ({header})")
    assert generic.transformers_model_types() == frozenset(CONFIG_MAPPING_NAMES)


#: decoders transformers 5 ships, at small sizes (the rule, not a model, is under test): their own
#: modeling code, traced, against the generic reading (arch/generic.py ``read``, called directly:
#: family modules now read these types, tests/test_family_traces.py)
UNREAD = [
    {"model_type": "olmo2"},
    {"model_type": "granite", "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "logits_scaling": 8.0},
    {"model_type": "glm4", "attention_bias": True, "partial_rotary_factor": 0.5},
    {"model_type": "smollm3", "no_rope_layer_interval": 4},
    {"model_type": "gemma3_text", "head_dim": 128, "sliding_window": 128, "tie_word_embeddings": True},
]
BASE = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
TRACED = [(cfg, fields) for cfg in UNREAD for fields in (dict(method="lora", seq_len=512), SETUPS[1])]
_DAY = datetime.date.today().toordinal()


@pytest.mark.trace
@requires("torch", "transformers", "peft")
@pytest.mark.parametrize(
    ("cfg", "fields"),
    [TRACED[(_DAY * 3 + k * 5) % len(TRACED)] for k in range(2)],
    ids=lambda v: v.get("model_type", v.get("method", "")) if isinstance(v, dict) else str(v),
)
def test_traced_unread_families_stay_inside_the_margin(cfg: dict, fields: dict, tmp_path: Path) -> None:
    """A rotating two of TRACED a day: the traced step of transformers' own model is at most the
    approximate estimate (margin included), and the reading without the margin is within it."""
    from vramplan.trace.run import trace

    model = config_file(tmp_path, **{**BASE, **cfg})
    setup = make_setup(**fields, **({"attention": "eager"} if cfg["model_type"] == "gemma3_text" else {}))
    traced = trace(model, setup, 1, fake=True).peak_bytes
    _, read_cfg = load_config(model)
    est = estimate(generic.read(model, read_cfg, "config.json", supported_model_types()), setup)
    ours = traceable_bytes(est)
    bare = ours - est.terms["overhead/approximation"]
    assert traced <= ours, (traced / 2**20, ours / 2**20)
    assert abs(bare - traced) / traced <= generic.MARGIN_PCT / 100, (traced / 2**20, bare / 2**20)
