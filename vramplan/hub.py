"""A model outside the catalog, by its Hub id: its ``config.json``, and nothing else.

``vramplan Org/Name`` for an id the catalog does not hold fetches only
``{endpoint}/{Org/Name}/resolve/{revision}/config.json`` — never weights, never code — keeps
it in a disk cache and reads it as JSON (models.py); no code from the repository runs, ever.
It honours what the Hub's own client reads from the environment
(huggingface_hub ``constants.py``): ``HF_ENDPOINT`` (a mirror), ``HF_HUB_OFFLINE`` (the cache
only), ``HF_TOKEN`` or the token file ``$HF_HOME/token`` (gated and private repositories;
``HF_HUB_DISABLE_IMPLICIT_TOKEN`` keeps the file's token unsent). The Hub names the cause of a
refusal in its ``X-Error-Code`` header (``GatedRepo``, ``RepoNotFound``, ``EntryNotFound``,
``RevisionNotFound``: huggingface_hub ``utils/_http.py`` ``hf_raise_for_status``); each
becomes one line.

The cache is ``$VRAMPLAN_CACHE/hub/<Org>/<Name>/<revision>/config.json`` (default
``$XDG_CACHE_HOME/vramplan``, else ``~/.cache/vramplan``), written whole or not at all; a cached
config is used without asking the Hub again (delete the folder to fetch it anew).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from vramplan.errors import VramplanError, shown
from vramplan.limits import MAX_CONFIG_BYTES

DEFAULT_ENDPOINT = "https://huggingface.co"
#: seconds to connect and between bytes read
TIMEOUT_S = 10.0
#: redirects followed (a renamed repository answers 307 with its new name)
MAX_REDIRECTS = 5
#: an ``Org/Name`` as the Hub spells repository ids (``huggingface_hub.utils.validate_repo_id``:
#: letters, digits, ``-``, ``_``, ``.``; at most 96 characters a part; no ``--`` or ``..``)
_REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TRUE = {"1", "on", "yes", "true"}


def is_repo_id(query: str) -> bool:
    """``query`` is spelled as a Hub repository id (``Org/Name``)."""
    return bool(_REPO_ID.match(query)) and not query.endswith((".json", "."))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    root = os.environ.get("VRAMPLAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vramplan"
    )
    return Path(root) / "hub"


def cached_path(repo_id: str, revision: str = "main") -> Path:
    org, name = repo_id.split("/")
    return cache_dir() / org / name / revision / "config.json"


def token() -> str | None:
    """The token the Hub's client would send: ``HF_TOKEN`` (or the older
    ``HUGGING_FACE_HUB_TOKEN``), else the file ``huggingface-cli login`` writes."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip()
    if os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN", "").strip().lower() in _TRUE:
        return None
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    path = Path(os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token"))
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def config_bytes(repo_id: str, revision: str = "main") -> bytes:
    """The ``config.json`` of ``repo_id`` as stored: from the cache, else fetched from the Hub
    (and cached); every failure is one VramplanError naming its cause."""
    cached = cached_path(repo_id, revision)
    try:
        if cached.is_file() and cached.stat().st_size <= MAX_CONFIG_BYTES:
            return cached.read_bytes()
    except OSError:
        pass
    if offline():
        raise VramplanError(
            "model",
            f"{shown(repo_id)} is not in the catalog and HF_HUB_OFFLINE is set: no config.json of it is cached"
            f" in {cached.parent} ('vramplan models' lists the catalog)",
        )
    url = f"{endpoint()}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/config.json"
    body = _get(url, repo_id)
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VramplanError("model", f"{url} did not answer with a JSON config (is HF_ENDPOINT a Hub?)") from None
    if not isinstance(data, dict):
        raise VramplanError("model", f"{url} did not answer with a JSON object")
    _write(cached, body)
    return body


def _get(url: str, repo_id: str) -> bytes:
    """The body at ``url``, following the Hub's redirects (the token only to the same host)."""
    auth = token()
    host = urllib.parse.urlsplit(url).netloc
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, headers={"User-Agent": "vramplan"})
        if auth and urllib.parse.urlsplit(url).netloc == host:
            request.add_header("Authorization", f"Bearer {auth}")
        try:
            with opener.open(request, timeout=TIMEOUT_S) as response:
                body: bytes = response.read(MAX_CONFIG_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                url = urllib.parse.urljoin(url, exc.headers["Location"])
                continue
            raise _refusal(exc, repo_id, bool(auth)) from None
        except (urllib.error.URLError, OSError) as exc:  # no route, DNS, refused, timed out
            reason = getattr(exc, "reason", exc)
            raise VramplanError(
                "model",
                f"cannot reach {endpoint()} for {shown(repo_id)} ({reason}); offline, the catalog still answers"
                " ('vramplan models'), or set HF_ENDPOINT to a mirror",
            ) from None
        if len(body) > MAX_CONFIG_BYTES:
            raise VramplanError("model", f"{url} answered more than {MAX_CONFIG_BYTES:,} bytes: not a config.json")
        return body
    raise VramplanError("model", f"{url}: more than {MAX_REDIRECTS} redirects")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as HTTPError, followed by :func:`_get` (which decides about the token)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _refusal(exc: urllib.error.HTTPError, repo_id: str, with_token: bool) -> VramplanError:
    code = exc.headers.get("X-Error-Code", "")
    name = shown(repo_id)
    if code == "GatedRepo" or (exc.code == 403 and code != "RepoNotFound"):
        how = "accept its license on the Hub with the account of your token" if with_token else "set HF_TOKEN"
        return VramplanError("model", f"{name} is gated on the Hub: {how} (only its config.json is read)")
    if code == "RepoNotFound" or (exc.code == 401 and not code):
        private = "" if with_token else " (a private one needs HF_TOKEN)"
        return VramplanError("model", f"{name} is not a model on the Hub{private}; 'vramplan models' lists the catalog")
    if code == "RevisionNotFound":
        return VramplanError("model", f"{name} has no such revision on the Hub")
    if code == "EntryNotFound" or exc.code == 404:
        return VramplanError("model", f"{name} has no config.json on the Hub (a dataset, or a GGUF-only repository?)")
    return VramplanError("model", f"the Hub answered {exc.code} {exc.reason} for {name}'s config.json")


def _write(path: Path, body: bytes) -> None:
    """``body`` into ``path`` whole or not at all; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
