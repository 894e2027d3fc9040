"""Gradio layout and wiring (placeholder until the app issue lands: the playground comes first)."""

from __future__ import annotations

import gradio as gr


def build_app() -> gr.Blocks:
    with gr.Blocks(title="VLM x VFM Fusion Lab") as demo:
        gr.Markdown("# VLM x VFM Fusion Lab\nThe app is being built; the solvers live in `core/`.")
    return demo


def launch(demo: gr.Blocks) -> None:
    demo.queue(default_concurrency_limit=1).launch(max_file_size="200mb", enable_monitoring=False)
