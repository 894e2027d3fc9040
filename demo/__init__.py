"""The Gradio app: layout (ui.py), pure handlers (callbacks.py, explore_callbacks.py), what
each tab shows (views.py, explore_views.py), figures (plots.py), overlays."""
