"""Text the app shows its users: no server paths, user text escaped exactly once.

- :func:`scrub_paths` replaces paths under the server's own folders (temp and upload folders, the
  Hugging Face and feature caches, the home and working folders) by their last component, so an
  error about ``/tmp/gradio/3f.../labels.csv`` says ``labels.csv``. Every message to a user goes
  through it (``demo.state.user_error``, ``warn_user``, the notes panel); the CLI, whose user owns
  the paths, does not.
- :func:`md_text` and :func:`md_code` put user text (file and class names) into Markdown as
  literal text: backslash escapes in running text (no HTML entities, which a code span would show
  as typed) and a long enough backtick fence for code spans, so ``<img src=x>`` and ``it's & co``
  read exactly so.
- :func:`weights_message` is the app's version of a missing-weights error: what is missing and
  who can fix it, without the server's cache folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from core.models import get_spec, hf_cache_dir
from core.pipeline import default_cache_dir

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_ROOT = Path(__file__).resolve().parents[1]


def _server_roots() -> list[str]:
    """Folders of this server whose paths must not reach a user, longest first."""
    env = os.environ
    roots = {tempfile.gettempdir(), env.get("GRADIO_TEMP_DIR", ""), env.get("TMPDIR", ""),
             hf_cache_dir(), env.get("HF_HOME", ""), str(default_cache_dir()),
             str(Path.home()), str(_ROOT), os.getcwd()}
    out = set()
    for root in roots:
        if root and len(root) > 1:
            out.add(root.rstrip("/\\"))
            out.add(os.path.realpath(root).rstrip("/\\"))
    return sorted((r for r in out if len(r) > 1), key=len, reverse=True)


def scrub_paths(text: str) -> str:
    """``text`` with every path under a server folder shortened to its last component."""
    text = str(text)
    roots = _server_roots()
    if not roots:
        return text
    pattern = re.compile("(?:" + "|".join(re.escape(r) for r in roots)
                         + r")(?:[/\\][^\s'\"`,;()<>]*)?")

    def short(match: re.Match) -> str:
        name = re.split(r"[/\\]", match.group(0).rstrip("/\\"))[-1]
        return name if match.group(0).rstrip("/\\") not in roots and name else "(server folder)"

    return pattern.sub(short, text)


def md_text(text) -> str:
    """User text as literal Markdown text (no markup, no HTML): punctuation backslash-escaped."""
    return _PUNCTUATION.sub(r"\\\1", " ".join(str(text).split()))


def md_code(text) -> str:
    """User text as a Markdown code span, shown exactly as is (one line)."""
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def weights_message(exc) -> str:
    """A ``WeightsUnavailableError`` for the app's user: the model, why, and who can fix it."""
    try:
        name = f"{get_spec(exc.key).display_name} ('{exc.key}')"
    except ValueError:
        name = f"'{exc.key}'"
    return scrub_paths(
        f"Cannot load the weights of {name}: {exc.reason}.\n"
        f"This server has no copy of the Hub repo '{exc.repo}'. Whoever runs it can fix this: "
        f"run `python -m core download {exc.key}` on a machine with internet, copy its Hugging "
        "Face cache to this server and set HF_HUB_OFFLINE=1, or let this server reach the "
        "Hugging Face Hub."
    )
