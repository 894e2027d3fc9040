"""Shared pytest setup: tests run offline and on the CPU, with few threads on the 2-core CI box."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# No background warm-up in the apps tests launch (demo.warmup): short processes, shared cores.
os.environ.setdefault("FUSIONLAB_WARM_UP", "0")


@pytest.fixture
def fail_second_call():
    """``wrap(fn, error)``: ``fn`` whose second call raises ``error`` (a later stage failing)."""

    def wrap(fn, error):
        calls = []

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise error
            return fn(*args, **kwargs)

        return wrapped

    return wrap
