"""A model outside the catalog by its Hub id (vramplan/hub.py), against a stand-in Hub served
on localhost: only config.json is asked for, it is cached, HF_ENDPOINT / HF_HUB_OFFLINE /
HF_TOKEN are honoured, and every failure is one line naming its cause (gated, not found,
offline, unreachable, not a config)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vramplan import hub
from vramplan.cli import main
from vramplan.errors import VramplanError
from vramplan.models import load_model
from vramplan.tables import tables_dir

CONFIG = (tables_dir() / "models" / "qwen2.5-0.5b" / "config.json").read_bytes()
TOKEN = "hf_stand_in_token"


class StandInHub(BaseHTTPRequestHandler):
    """What huggingface.co answers for ``/{repo}/resolve/{revision}/{file}`` (status and
    ``X-Error-Code`` as huggingface_hub's ``hf_raise_for_status`` reads them)."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        auth = self.headers.get("Authorization")
        self.seen.append((self.path, auth))
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        if repo == "Old/Name":
            return self._send(307, b"", Location="/Acme/Tiny-0.5B/resolve/main/config.json")
        if repo == "Acme/Gated":
            if auth == f"Bearer {TOKEN}":
                return self._send(403, b"", **{"X-Error-Code": "GatedRepo"})
            return self._send(401, b"", **{"X-Error-Code": "GatedRepo"})
        if repo == "Acme/Private" and auth == f"Bearer {TOKEN}":
            return self._send(200, CONFIG)
        if repo in ("Acme/Private", "Acme/Nothing"):
            return self._send(401, b"", **{"X-Error-Code": "RepoNotFound"})
        if repo == "Acme/NoConfig":
            return self._send(404, b"", **{"X-Error-Code": "EntryNotFound"})
        if repo == "Acme/Html":
            return self._send(200, b"<html>a login page</html>")
        if repo == "Acme/RemoteCode":
            cfg = {"model_type": "acme_secret", "auto_map": {"AutoModelForCausalLM": "modeling_acme.AcmeLM"}}
            return self._send(200, json.dumps(cfg).encode())
        if repo == "Acme/Tiny-0.5B" and rest == "main/config.json":
            return self._send(200, CONFIG)
        return self._send(404, b"", **{"X-Error-Code": "RepoNotFound"})

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[str, str | None]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StandInHub.seen = []
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "cache"))
    try:
        yield StandInHub.seen
    finally:
        server.shutdown()
        server.server_close()


def spec_of(repo: str, **kw: bool):  # noqa: ANN201
    from vramplan.models import _load_model

    _load_model.cache_clear()
    return load_model(repo, **kw)


def _plain_json() -> str:
    from vramplan import plan

    return plan("qwen2.5-0.5b", "4090", method="lora").model_dump_json()


def refused(repo: str) -> str:
    with pytest.raises(VramplanError) as err:
        spec_of(repo)
    return str(err.value)


def test_a_hub_id_plans_from_its_config_only(stand_in, capsys) -> None:
    assert main(["Acme/Tiny-0.5B", "--gpu", "4090", "--method", "lora", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "Acme/Tiny-0.5B"
    assert data["total_params"] == json.loads(_plain_json())["total_params"]
    assert [path for path, _ in stand_in] == ["/Acme/Tiny-0.5B/resolve/main/config.json"]


def test_the_config_is_cached_and_read_offline(stand_in, monkeypatch, tmp_path) -> None:
    spec_of("Acme/Tiny-0.5B")
    assert (tmp_path / "cache" / "hub" / "Acme" / "Tiny-0.5B" / "main" / "config.json").read_bytes() == CONFIG
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert spec_of("Acme/Tiny-0.5B").hidden_size == load_model("qwen2.5-0.5b").hidden_size
    assert len(stand_in) == 1  # the second answer came from the cache


def test_offline_without_a_cached_config_is_one_line(stand_in, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set: no config.json of it is cached" in refused("Acme/Tiny-0.5B")
    assert stand_in == []


def test_gated_without_and_with_a_token(stand_in, monkeypatch) -> None:
    assert (
        refused("Acme/Gated") == "model: 'Acme/Gated' is gated on the Hub: set HF_TOKEN (only its config.json is read)"
    )
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert "accept its license on the Hub" in refused("Acme/Gated")
    assert stand_in[-1][1] == f"Bearer {TOKEN}"


def test_the_token_file_opens_a_private_repository(stand_in, tmp_path) -> None:
    assert "is not a model on the Hub (a private one needs HF_TOKEN)" in refused("Acme/Private")
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text(TOKEN + "\n")
    assert spec_of("Acme/Private").hidden_size == load_model("qwen2.5-0.5b").hidden_size


def test_not_found_no_config_and_not_json(stand_in) -> None:
    assert "is not a model on the Hub" in refused("Acme/Nothing")
    assert "has no config.json on the Hub" in refused("Acme/NoConfig")
    assert "did not answer with a JSON config" in refused("Acme/Html")


def test_a_redirect_is_followed_with_the_token_on_the_same_host(stand_in, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert spec_of("Old/Name").hidden_size == load_model("qwen2.5-0.5b").hidden_size
    assert [a for _, a in stand_in] == [f"Bearer {TOKEN}"] * 2


def test_a_remote_code_config_is_refused_without_running_anything(stand_in, capsys) -> None:
    assert main(["Acme/RemoteCode", "--gpu", "4090"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vramplan: error: ") and "\n" not in err and "acme_secret" in err


def test_an_unreachable_endpoint_is_one_line(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert "cannot reach http://127.0.0.1:9 for 'Acme/Tiny-0.5B'" in refused("Acme/Tiny-0.5B")


def test_catalog_ids_and_paths_never_ask_the_hub(stand_in, tmp_path) -> None:
    spec_of("Qwen/Qwen2.5-7B-Instruct")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_bytes(CONFIG)
    spec_of(str(tmp_path / "m"))
    assert stand_in == []


def test_hub_false_answers_from_this_machine_alone(stand_in) -> None:
    with pytest.raises(VramplanError, match="unknown model 'Acme/Tiny-0.5B'"):
        spec_of("Acme/Tiny-0.5B", hub=False)
    assert stand_in == []


@pytest.mark.parametrize(
    ("query", "is_id"),
    [
        ("Qwen/Qwen2.5-7B", True),
        ("a/b.c-d_e", True),
        ("a/b/c", False),
        ("a--b/c", False),
        ("../x", False),
        ("x/config.json", False),
        ("qwen2.5-7b", False),
        ("/abs/path", False),
    ],
)
def test_what_is_spelled_as_a_hub_id(query: str, is_id: bool) -> None:
    assert hub.is_repo_id(query) is is_id
