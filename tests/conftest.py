"""Shared pytest setup: tests run offline and on the CPU, with few threads on the 2-core CI box."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# No background warm-up in the apps tests launch (demo.warmup): short processes, shared cores.
os.environ.setdefault("FUSIONLAB_WARM_UP", "0")
