"""Hugging Face Spaces entry point: builds the Gradio app and launches it."""

from demo.ui import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo)
