"""The Gradio app: layout and wiring (ui.py); the per-session record (state.py); the Run and the
live re-solves (run.py) and the input controls (inputs.py); one module per tab holding its
handlers and view builders (predictions, metrics, embedding, dynamics, segmentation, lazsl,
playground); figures (plots.py), image overlays (overlays.py), example sets (examples.py)."""
