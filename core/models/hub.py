"""Model weights from the Hugging Face Hub: cache checks, a fast reachability probe, clear errors.

Weights only ever come from the Hub on the user's machine (DESIGN.md, "Encoders"). This module
decides, before any model code runs, whether the files an entry of `core.models.MODELS` needs are
in the local Hugging Face cache; if not, it downloads them when the Hub is reachable and otherwise
fails within seconds with a `WeightsUnavailableError` that names the model, the Hub repo, the cache
folder it looked in and how to fix it. It never falls back to random weights.

The environment is read at call time, not at import time (``huggingface_hub.constants`` freezes it
on import): ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, ``HF_ENDPOINT``, ``HF_HUB_CACHE``,
``HF_HOME``, ``XDG_CACHE_HOME`` and the usual ``HTTPS_PROXY`` variables.

Where open_clip keeps its weights: for a tag such as ``pretrained='openai'`` open_clip 3.3 looks up
``open_clip.get_pretrained_cfg(arch, tag)['hf_hub']`` (``timm/vit_base_patch16_clip_224.openai/``
for ViT-B-16) and downloads ``open_clip_model.safetensors`` from that repo, falling back to
``open_clip_pytorch_model.bin``. We check and fetch exactly those files, then hand open_clip the
local path, so open_clip itself never touches the network.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TRANSFORMERS_CONFIG = ("config.json",)
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer_config.json",)
TOKENIZER_PATTERNS = ["*.json", "*.model", "*.txt"]
PROBE_TIMEOUT_S = 3.0  # socket timeout of the reachability probe; the whole probe is bounded too

_TRUE = {"1", "ON", "YES", "TRUE"}


class WeightsUnavailableError(RuntimeError):
    """The weights of a registry entry are neither in the local cache nor downloadable now.

    Attributes
    ----------
    key, repo, cache_dir, reason : str
        The registry key, the Hub repo, the cache folder that was searched and what went wrong.
    """

    def __init__(self, message: str, *, key: str, repo: str, cache_dir: str, reason: str):
        super().__init__(message)
        self.key = key
        self.repo = repo
        self.cache_dir = cache_dir
        self.reason = reason


@dataclass(frozen=True)
class FileNeed:
    """One file a model needs: the first of ``alternatives`` found in ``repo`` satisfies it."""

    repo: str
    alternatives: tuple[str, ...]


def hf_cache_dir() -> str:
    """The Hugging Face Hub cache folder, resolved from the environment now."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(os.path.expandvars(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return os.path.join(os.path.expanduser(os.path.expandvars(home)), "hub")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now or was at import."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def probe_hub(endpoint: str | None = None, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Open one TCP connection to the Hub (or to the proxy that would carry the request).

    Returns None when the connection succeeds, else a short description of the failure. The
    whole probe, DNS included, is bounded by about ``timeout`` seconds: a closed network fails
    here in seconds instead of in a minute of HTTP retries.
    """
    endpoint = endpoint or hub_endpoint()
    parsed = urllib.parse.urlsplit(endpoint)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return f"HF_ENDPOINT={endpoint!r} is not a URL"
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 8080
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    # A thread bounds getaddrinfo too, which has no timeout of its own.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if not outcome:
        return f"no answer from {host}:{port} within {timeout:.0f} s"
    return outcome[0]


def files_needed(spec) -> list[FileNeed]:
    """The files a registry entry needs from the Hub (empty for random-init test entries)."""
    if spec.random_init:
        return []
    if spec.library == "open_clip":
        needs = [FileNeed(spec.hf_repo, OPEN_CLIP_WEIGHTS)]
        if spec.tokenizer_repo:
            needs.append(FileNeed(spec.tokenizer_repo, TOKENIZER_FILES))
        return needs
    return [
        FileNeed(spec.hf_repo, TRANSFORMERS_CONFIG),
        FileNeed(spec.hf_repo, TRANSFORMERS_WEIGHTS),
    ]


def cached_path(need: FileNeed, cache_dir: str) -> str | None:
    """Local path of the first cached alternative of ``need``, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in need.alternatives:
        found = try_to_load_from_cache(need.repo, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def ensure_weights(spec, *, allow_download: bool = True) -> tuple[str, dict[str, str]]:
    """Make sure every file ``spec`` needs is cached; download it if allowed and possible.

    Returns
    -------
    cache_dir : str
        The Hugging Face cache folder to pass to the loaders (with ``local_files_only=True``).
    paths : dict
        ``{repo/first-alternative: local path}`` for each needed file.

    Raises
    ------
    WeightsUnavailableError
        Offline with files missing, Hub unreachable, gated repo without access, unknown repo.
    """
    cache_dir = hf_cache_dir()
    needs = files_needed(spec)
    paths = {f"{n.repo}/{n.alternatives[0]}": cached_path(n, cache_dir) for n in needs}
    if all(paths.values()):
        return cache_dir, paths
    missing = _missing(needs, paths)
    if hub_offline():
        raise unavailable(spec, cache_dir, f"HF_HUB_OFFLINE is set and the cache lacks {missing}")
    if not allow_download:
        raise unavailable(spec, cache_dir, f"the cache lacks {missing}")
    endpoint = hub_endpoint()
    problem = probe_hub(endpoint)
    if problem is not None:
        raise unavailable(
            spec, cache_dir, f"the cache lacks {missing} and the Hub at {endpoint} is unreachable "
            f"({problem})"
        )
    try:
        _download(spec, cache_dir, endpoint)
    except Exception as exc:  # classified into one actionable message
        raise unavailable(spec, cache_dir, _describe_download_error(exc, endpoint)) from exc
    paths = {f"{n.repo}/{n.alternatives[0]}": cached_path(n, cache_dir) for n in needs}
    if not all(paths.values()):
        missing = _missing(needs, paths)
        raise unavailable(
            spec, cache_dir, f"the download finished but the cache still lacks {missing}"
        )
    return cache_dir, paths


def _missing(needs: list[FileNeed], paths: dict[str, str | None]) -> str:
    """'repo/a (or b, c) and repo/d' for the needs without a cached file."""
    parts = []
    for need in needs:
        if paths[f"{need.repo}/{need.alternatives[0]}"] is None:
            first, *others = need.alternatives
            parts.append(f"{need.repo}/{first}" + (f" (or {', '.join(others)})" if others else ""))
    return " and ".join(parts)


def _download(spec, cache_dir: str, endpoint: str) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    def first_of(repo: str, filenames: tuple[str, ...]) -> None:
        for i, filename in enumerate(filenames):
            try:
                hf_hub_download(repo, filename, cache_dir=cache_dir, endpoint=endpoint)
                return
            except EntryNotFoundError:
                if i == len(filenames) - 1:
                    raise

    if spec.library == "open_clip":
        first_of(spec.hf_repo, OPEN_CLIP_WEIGHTS)
        if spec.tokenizer_repo:
            snapshot_download(
                spec.tokenizer_repo, cache_dir=cache_dir, endpoint=endpoint,
                allow_patterns=TOKENIZER_PATTERNS,
            )
        return
    snapshot_download(
        spec.hf_repo, cache_dir=cache_dir, endpoint=endpoint,
        allow_patterns=["*.json", "*.safetensors"],
    )
    if cached_path(FileNeed(spec.hf_repo, TRANSFORMERS_WEIGHTS), cache_dir) is None:
        first_of(spec.hf_repo, ("pytorch_model.bin",))  # old repos without safetensors


def _describe_download_error(exc: Exception, endpoint: str) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return "the repo is gated and this account has no access yet (HTTP 401/403)"
    if isinstance(exc, RepositoryNotFoundError):
        return "the Hub answered 'repository not found' (a private or gated repo needs a token)"
    if isinstance(exc, OfflineModeIsEnabled):
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return f"the Hub refused access (HTTP {status}): log in or accept the licence"
    return f"the download from {endpoint} failed ({type(exc).__name__}: {exc})"


def unavailable(spec, cache_dir: str, reason: str) -> WeightsUnavailableError:
    """Build the error for ``spec`` with the what / where / how-to-fix message."""
    repo = spec.hf_repo or spec.model_id
    lines = [
        f"Cannot load the weights of {spec.display_name} ('{spec.key}'): {reason}.",
        f"Looked for the Hub repo '{repo}' in the Hugging Face cache at {cache_dir}.",
        "How to fix:",
        f"  - on a machine with internet run `python -m core download {spec.key}`, copy its "
        f"Hugging Face cache to this machine (point HF_HUB_CACHE or HF_HOME at the copy) and set "
        "HF_HUB_OFFLINE=1;",
        "  - or give this machine access to the Hub (or set HF_ENDPOINT to a reachable mirror) "
        "and unset HF_HUB_OFFLINE.",
    ]
    if spec.gated:
        lines.append(
            f"  - {spec.display_name} is gated: accept its licence at {hub_endpoint()}/{repo} "
            "while logged in, then set HF_TOKEN or run `hf auth login` before downloading."
        )
    return WeightsUnavailableError(
        "\n".join(lines), key=spec.key, repo=repo, cache_dir=cache_dir, reason=reason
    )


INCOMPLETE = "the cached files are incomplete"  # one wording for every unusable cached file


def checkpoint_does_not_fit(spec, cache_dir: str, *, missing=(), mismatched=(), unexpected=(),
                            detail: str = "") -> WeightsUnavailableError:
    """The error for a cached checkpoint that does not fit the entry's architecture.

    Parameters
    ----------
    missing, unexpected : iterable of str
        Tensor names the architecture has and the checkpoint lacks, and the reverse.
    mismatched : iterable of (name, checkpoint shape, model shape)
    detail : str
        What the loader said, for when the names above are not known.

    Loading such a checkpoint would leave tensors random-initialised (transformers) or fail with
    ``load_state_dict``'s raw error (open_clip); both libraries get this message instead.
    """
    def names(items) -> str:
        items = sorted(items)
        return ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")

    missing, unexpected = list(missing), list(unexpected)
    shapes = sorted((str(k), tuple(a), tuple(b)) for k, a, b in mismatched)
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s) of the architecture ({names(missing)})")
    if shapes:
        listed = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in shapes[:5])
        parts.append(f"{len(shapes)} tensor(s) of the wrong shape ({listed}"
                     f"{', ...' if len(shapes) > 5 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) the architecture does not have "
                     f"({names(unexpected)})")
    found = "; ".join(parts) or detail
    return unavailable(
        spec, cache_dir,
        f"{INCOMPLETE} or not the expected model (its checkpoint: {found}); it is not loaded, "
        "since that would leave random weights in the model (an interrupted, corrupted or "
        "mismatched download)",
    )
