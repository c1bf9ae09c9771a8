"""The model catalog: real configs with provenance, names people type, local paths."""

from __future__ import annotations

import json

import pytest

from vramplan.errors import VramplanError
from vramplan.models import catalog_names, catalog_sources, load_config, load_model, models_dir, resolve_model_name
from vramplan.params import param_counts

REQUIRED = [
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-3b",
    "qwen2.5-7b",
    "qwen2.5-14b",
    "qwen2.5-32b",
    "qwen2.5-72b",
    "qwen2-7b",
    "qwen1.5-7b",
    "qwen1.5-14b",
    "qwen-1.8b",
    "qwen-7b",
    "qwen-14b",
    "qwen-72b",
    "qwen3-8b",
    "qwen3-30b-a3b",
    "qwen2-vl-2b",
    "qwen2-vl-7b",
    "qwen2-vl-72b",
    "qwen2.5-vl-3b",
    "qwen2.5-vl-7b",
    "qwen2.5-vl-72b",
    "qwen-vl-chat",
    "llama-2-7b",
    "llama-2-70b",
    "llama-3-8b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "llama-3.3-70b",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "mistral-7b-v0.3",
    "yi-34b",
    "gemma-2-9b",
    "phi-3-mini",
]


def test_required_models_present() -> None:
    missing = [m for m in REQUIRED if m not in catalog_names()]
    assert not missing, f"catalog lacks {missing}"


@pytest.mark.parametrize("name", catalog_names())
def test_every_entry_has_provenance_and_parses(name: str) -> None:
    src = catalog_sources()[name]
    assert src.name == name
    assert "/" in src.hub_id
    assert src.config_source
    assert param_counts(load_model(name)).total > 0


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("qwen2.5-7b", "qwen2.5-7b"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        ("qwen2.5-7b-instruct", "qwen2.5-7b"),
        ("QWEN2.5-7B", "qwen2.5-7b"),
        ("qwen-7b-chat", "qwen-7b"),
        ("Qwen/Qwen-7B-Chat", "qwen-7b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ],
)
def test_names_people_type_resolve(typed: str, name: str) -> None:
    assert resolve_model_name(typed) == name


def test_unknown_model_names_closest() -> None:
    with pytest.raises(VramplanError) as err:
        resolve_model_name("qwen2.5-8b")
    assert err.value.field == "model"
    assert "qwen2.5-7b" in str(err.value)


def test_local_config_path_and_folder(tmp_path) -> None:
    cfg = json.loads((models_dir() / "qwen2.5-0.5b" / "config.json").read_text())
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    by_file = load_model(str(folder / "config.json"))
    by_folder = load_model(str(folder))
    assert (
        param_counts(by_file).total == param_counts(by_folder).total == param_counts(load_model("qwen2.5-0.5b")).total
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"model_type": "qwen2", "hidden_size": 64}', "num_attention_heads"),
        ('{"model_type": "qwen2", "hidden_size": -4, "num_attention_heads": 4}', "hidden_size"),
        ('{"model_type": "t5"}', "not supported"),
    ],
)
def test_malformed_config_is_one_line(tmp_path, content: str, says: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(VramplanError) as err:
        load_model(str(path))
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_path() -> None:
    with pytest.raises(VramplanError):
        load_config("/nonexistent/dir/config.json")


def test_no_trust_remote_code_anywhere() -> None:
    from pathlib import Path

    import vramplan

    pkg = Path(vramplan.__file__).parent
    for py in pkg.rglob("*.py"):
        assert "trust_remote_code=True" not in py.read_text(), py


@pytest.mark.parametrize(
    ("query", "first", "absent"),
    [
        ("deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-qwen-32b (qwen2,", "qwen-7b (qwen,"),  # not Qwen v1
        ("gemma-3-13b", "gemma-3-12b (gemma3,", "llama"),  # the family's nearest size
        ("qwen2.5-8b", "qwen2.5-7b (qwen2,", "qwen2.5-vl"),  # a VLM adds a word
        ("olmo-2-1b", "olmo-2-7b (olmo2,", "llama"),  # the family's nearest size, not another family's
        ("falcon-7b", None, "llama-2-7b"),  # no family in common, no near spelling: nothing offered
    ],
)
def test_unknown_names_are_answered_by_family_and_size(query: str, first: str | None, absent: str) -> None:
    from vramplan.models import nearest_models

    near = nearest_models(query)
    assert near[0].startswith(first) if first else near == [], near
    assert not any(absent in n for n in near[:2]), near
