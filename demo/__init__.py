"""The Gradio app: layout (ui.py), pure handlers (callbacks.py), figures (plots.py), overlays."""
