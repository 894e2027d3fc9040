"""The Gradio app: layout and wiring (ui.py); the per-session record (state.py); the Run and the
live re-solves (run.py) and the input controls (inputs.py); one module per tab holding its
handlers and view builders (predictions, metrics, embedding, dynamics, segmentation, lazsl,
playground) and the links between the maps and the gallery (linking.py); figures (plots.py, with
the embedding maps in maps.py and their shared style in figstyle.py), image overlays
(overlays.py; LaZSL crop boxes in crop_views.py), non-overlapping label placement
(placement.py), example sets (examples.py)."""
