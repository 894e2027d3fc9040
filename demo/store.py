"""Server-side session store: each user's state with a time-to-live and caps on count and bytes.

Gradio keeps a ``gr.State`` value until the browser tab closes and then for another hour, and an
API client never closes its tab: every abandoned session used to keep its uploaded bytes, features
and results forever (issue 13). Here the app's :class:`~demo.state.Session` objects live in one
:class:`SessionStore` per app, keyed by Gradio's session hash (one per tab or API client), and:

- a session unused for ``ttl_s`` (``FUSIONLAB_SESSION_TTL_S``, default 1 hour) is dropped;
- at most ``max_sessions`` (``FUSIONLAB_MAX_SESSIONS``, default 32) live at once and their
  estimated bytes (``demo.memory.estimate_bytes``: image bytes, tensors, memoised views) stay under
  ``max_bytes`` (``FUSIONLAB_SESSIONS_MAX_BYTES``, default 2 GiB): the least recently used go
  first; the session being stored is never evicted by its own arrival;
- a dropped session's work folder (thumbnails, downloads) is deleted at once, and so is the old
  folder of a session replaced by a new Run;
- a user who comes back after their session was dropped gets a message saying why and what to
  do (a bounded memory of dropped keys, ``TOMBSTONES``), not silence;
- each session's last few records (``demo.history``: one per Run and recipes, at most
  ``run_history``, default ``core.config.APP_RUN_HISTORY``) are kept beside it for the Compare
  tab, updated by every new record stored and dropped with the session;
- ``on_drop(key)`` lets the app forget its framework's own per-session data too (``demo.ui``
  drops Gradio's per-session copies of the components' values, which Gradio itself keeps until
  10,000 sessions).

``stored(fn, store)`` adapts a handler of the demo tab modules (which
take and return :class:`Session` objects, so tests call them directly) to this store: the
``gr.State`` then holds only the key. Expired sessions are swept by every store call and by a
daemon thread every ``sweep_every_s`` (a quarter of the TTL, at most a minute), which also hands
freed heap back to the operating system (glibc ``malloc_trim``).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import typing
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

import core.config as config
from core.pipeline import parse_size
from demo.history import RunRecord, remember
from demo.memory import estimate_bytes, release_memory
from demo.state import Session, remove_workdir, user_error

log = logging.getLogger("fusionlab.app")

DEFAULT_TTL_S = config.APP_SESSION_TTL_S
DEFAULT_MAX_SESSIONS = config.APP_MAX_SESSIONS
DEFAULT_MAX_BYTES = config.APP_SESSIONS_MAX_BYTES
DEFAULT_RUN_HISTORY = config.APP_RUN_HISTORY
TOMBSTONES = 10_000  # keys of dropped sessions remembered for the "your session expired" message


@dataclass(frozen=True)
class StoreLimits:
    """Limits of the session store (see the module docstring); ``from_env`` reads the overrides."""

    ttl_s: float = DEFAULT_TTL_S
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_bytes: int = DEFAULT_MAX_BYTES
    run_history: int = DEFAULT_RUN_HISTORY

    def __post_init__(self):
        for name in ("ttl_s", "max_sessions", "max_bytes", "run_history"):
            if not getattr(self, name) > 0:
                raise ValueError(f"session store {name}: expected a positive value, got "
                                 f"{getattr(self, name)!r}.")

    @classmethod
    def from_env(cls) -> StoreLimits:
        """Defaults overridden by ``FUSIONLAB_SESSION_TTL_S``, ``FUSIONLAB_MAX_SESSIONS`` and
        ``FUSIONLAB_SESSIONS_MAX_BYTES``."""
        env = os.environ
        try:
            return cls(
                ttl_s=float(env.get("FUSIONLAB_SESSION_TTL_S") or DEFAULT_TTL_S),
                max_sessions=int(env.get("FUSIONLAB_MAX_SESSIONS") or DEFAULT_MAX_SESSIONS),
                max_bytes=parse_size(env.get("FUSIONLAB_SESSIONS_MAX_BYTES") or
                                     str(DEFAULT_MAX_BYTES), "FUSIONLAB_SESSIONS_MAX_BYTES"))
        except ValueError as exc:
            raise ValueError(f"session store settings: {exc}") from None


def _estimate(session: Session, fallback: int) -> int:
    try:
        return estimate_bytes(session)
    except RuntimeError:  # another handler of this session grew its memo meanwhile
        return fallback


@dataclass
class _Entry:
    session: Session
    nbytes: int
    last_used: float


class SessionStore:
    """Live sessions by key, least recently used first (see the module docstring)."""

    def __init__(self, limits: StoreLimits | None = None, *, clock: Callable[[], float] =
                 time.monotonic, sweep_every_s: float | None = None,
                 on_drop: Callable[[str], None] | None = None):
        self.limits = limits or StoreLimits.from_env()
        self._clock = clock
        self.on_drop = on_drop  # called with the key of every dropped session
        self._lock = threading.RLock()
        self._live: OrderedDict[str, _Entry] = OrderedDict()
        self._dropped: OrderedDict[str, str] = OrderedDict()  # key -> why (tombstones)
        self._history: dict[str, tuple[RunRecord, ...]] = {}  # key -> records, oldest first
        self.n_dropped = 0
        every = sweep_every_s if sweep_every_s is not None else min(60.0,
                                                                    self.limits.ttl_s / 4)
        if every > 0:
            _start_sweeper(self, every)

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    @property
    def nbytes(self) -> int:
        """Estimated bytes of the live sessions."""
        with self._lock:
            return sum(e.nbytes for e in self._live.values())

    def get(self, key: str | None) -> Session | None:
        """The live session of ``key`` (now the most recently used), or None.

        Raises ``gr.Error`` with the reason when ``key``'s session was dropped.
        """
        if not key:
            return None
        with self._lock:
            self.sweep()
            entry = self._live.get(key)
            if entry is not None:
                entry.last_used = self._clock()
                self._live.move_to_end(key)
                return entry.session
            why = self._dropped.get(key)
        if why is not None:
            raise user_error(
                f"Your results are no longer on the server: {why}. Press Run again to recompute "
                "them (features already computed are cached, so it is quicker).",
                title="Session expired")
        return None

    def history(self, key: str | None) -> tuple[RunRecord, ...]:
        """``key``'s last records, oldest first (the newest is the live session's)."""
        with self._lock:
            return self._history.get(key, ()) if key else ()

    # ------------------------------------------------------------------ updates

    def put(self, key: str, session: Session) -> None:
        """Store (or update) ``key``'s session, then enforce the caps on the others."""
        with self._lock:
            old = self._live.get(key)
            history = self._history.get(key, ())
        if old is None or old.session is not session:  # a new record (not a re-estimate)
            history = remember(history, session, keep=self.limits.run_history)
        nbytes = _estimate((session, history), old.nbytes if old is not None else 0)
        with self._lock:
            old = self._live.pop(key, None)
            self._dropped.pop(key, None)
            self._live[key] = _Entry(session, nbytes, self._clock())
            self._history[key] = history
            if old is not None and old.session.workdir != session.workdir:
                _remove_workdir(old.session)  # the previous Run's folder
            self.sweep()
            self._enforce_caps(keep=key)

    def update(self, key: str, old: Session, new: Session) -> bool:
        """Store ``new`` for ``key`` only if ``old`` is still its live session (a handler that
        worked on ``old`` must not revive a session dropped meanwhile, whose folder is gone)."""
        with self._lock:
            entry = self._live.get(key)
            if entry is None or entry.session is not old:
                return False
            self.put(key, new)
            return True

    def discard(self, key: str | None, why: str | None = None) -> None:
        """Drop ``key``'s session now (its folder too); ``why`` is told to the user if they
        come back (None: forget the key, e.g. the tab was closed)."""
        with self._lock:
            entry = self._live.pop(key, None) if key else None
            if entry is not None:
                self._drop(key, entry, why)

    def sweep(self) -> int:
        """Drop sessions unused for longer than the TTL; returns how many."""
        now, ttl = self._clock(), self.limits.ttl_s
        dropped = 0
        with self._lock:
            while self._live:
                key, entry = next(iter(self._live.items()))
                if now - entry.last_used <= ttl:
                    break
                del self._live[key]
                self._drop(key, entry, f"it was unused for more than {_minutes(ttl)}")
                dropped += 1
        return dropped

    def clear(self) -> None:
        """Drop every session (server shutdown, tests)."""
        with self._lock:
            for key in list(self._live):
                self._drop(key, self._live.pop(key), "the server was restarted")

    def _enforce_caps(self, keep: str) -> None:
        limits = self.limits
        for key in list(self._live):
            over_count = len(self._live) > limits.max_sessions
            over_bytes = sum(e.nbytes for e in self._live.values()) > limits.max_bytes
            if not (over_count or over_bytes):
                break
            if key == keep:
                continue
            why = (f"the server keeps at most {limits.max_sessions} sessions and yours was the "
                   "least recently used" if over_count else
                   f"the server keeps at most {limits.max_bytes / 2**20:,.0f} MB of sessions and "
                   "yours was the least recently used")
            self._drop(key, self._live.pop(key), why)

    def _drop(self, key: str, entry: _Entry, why: str | None) -> None:
        _remove_workdir(entry.session)
        self._history.pop(key, None)
        self.n_dropped += 1
        if self.on_drop is not None:
            try:
                self.on_drop(key)
            except Exception:  # a hook must never keep a session alive
                log.exception("session store: on_drop failed")
        if why is not None:
            self._dropped[key] = why
            self._dropped.move_to_end(key)
            while len(self._dropped) > TOMBSTONES:
                self._dropped.popitem(last=False)
        log.info("session dropped (%s); %d live", why or "closed", len(self._live))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} seconds"


def _remove_workdir(session: Session) -> None:
    remove_workdir(session.workdir)


def _start_sweeper(store: SessionStore, every_s: float) -> None:
    """A daemon thread that sweeps ``store`` until it is garbage-collected."""
    ref = weakref.ref(store)

    def loop() -> None:
        while True:
            time.sleep(every_s)
            live = ref()
            if live is None:
                return
            if live.sweep():
                release_memory()
            del live

    threading.Thread(target=loop, name="session-sweeper", daemon=True).start()


# ----------------------------------------------------------------------------- handler adapter


STALE_RETRIES = 3  # times a handler is run on the live record before its last output is shown


def stored(fn: Callable, store: SessionStore, *, takes_session: bool = True) -> Callable:
    """``fn`` (a handler whose first argument is the session, if ``takes_session``, and whose
    NamedTuple output may hold a ``session`` field) wired to ``store``.

    The returned function takes the ``gr.State`` value (the key, ignored: Gradio's session hash
    is the key) in place of the session and a ``gr.Request`` (injected by Gradio, first), and
    returns the key in place of the session. Its signature is ``fn``'s plus the request, so Gradio
    still finds ``fn``'s ``gr.Progress`` default. A generator ``fn`` (a Run streaming its stages)
    has each yielded output kept as it comes; if it takes ``current_session``, it gets a callable
    returning the session the store holds now (what the user's sliders made of a stage).
    A handler that takes ``history`` gets the key's records (``SessionStore.history``).
    """

    def keep_output(key, session, out):
        """(output with the key in place of the session, whether it may be shown): False when
        ``fn`` worked on a record that another handler replaced meanwhile."""
        new = getattr(out, "session", None) if hasattr(out, "_fields") else None
        if isinstance(new, Session) and key:
            if isinstance(session, Session):  # a re-solve of the session it was given
                if not store.update(key, session, new):
                    return out._replace(session=key), not isinstance(store.get(key), Session)
            else:  # a Run: a new session replaces whatever this key had
                store.put(key, new)
            out = out._replace(session=key)
        elif isinstance(session, Session) and key:
            store.update(key, session, session)  # views may have memoised more: re-estimate
        return out, True

    def session_of(request, args):
        key = getattr(request, "session_hash", None)
        if takes_session:
            session = store.get(key)
            return key, session, (session, *args[1:])
        return key, None, args

    if inspect.isgeneratorfunction(fn):  # a Run streaming its stages: keep each one
        def stream(request: gr.Request | None, *args, **kwargs):
            key, session, args = session_of(request, args)
            if "current_session" in inspect.signature(fn).parameters:
                # what the user has now (a slider may have re-solved a stage's record)
                kwargs["current_session"] = lambda: store.get(key)
            for out in fn(*args, **kwargs):
                yield keep_output(key, session, out)[0]

        wrapper = stream
    else:
        def wrapper(request: gr.Request | None, *args, **kwargs):
            # A re-solve that worked on a record replaced meanwhile (a Run's later stage, or
            # another control's re-solve, landed first) is redone on the live record, so that
            # neither change is lost and the page never shows settings the record does not have.
            for _ in range(STALE_RETRIES):
                key, session, fn_args = session_of(request, args)
                if "history" in inspect.signature(fn).parameters:
                    kwargs["history"] = store.history(key)
                out, current = keep_output(key, session, fn(*fn_args, **kwargs))
                if current:
                    break
            return out

    params = [p for p in inspect.signature(fn).parameters.values()
              if p.name not in ("current_session", "history")]  # ours to fill, not Gradio's
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=gr.Request)
    wrapper.__signature__ = inspect.Signature([request, *params])
    try:
        hints = typing.get_type_hints(fn)  # gr.SelectData and the like must stay visible
    except (NameError, TypeError):
        hints = {}
    wrapper.__annotations__ = {**hints, "request": gr.Request}
    wrapper.__name__ = getattr(fn, "__name__", "handler")
    wrapper.__doc__ = fn.__doc__
    return wrapper
