"""Input errors of Gradio's own controls that name the control.

Gradio checks a slider's range and a dropdown's choices before a handler runs, and its message
("Value 5 is greater than maximum value 2.0.") does not say which of the app's dozen sliders was
wrong, which matters to API clients. :func:`name_input_errors` wraps the ``preprocess`` of the
control classes the app uses so every such error starts with the control's label: "λ (OTFusion:
weight of CLIP): Value 5 is greater than maximum value 2.0." A wrapper on the class (installed once,
idempotent) rather than on each instance, because Gradio rebuilds a control from its constructor
arguments for every ``gr.update`` of it (the page slider, the pickers), which would drop an
instance attribute; the label survives that. Other Gradio apps in the same process only gain the
label in such messages.
"""

from __future__ import annotations

import functools
import html

import gradio as gr

CONTROLS = (gr.Slider, gr.Number, gr.Dropdown, gr.Radio, gr.CheckboxGroup)


def _label(component) -> str:
    return str(getattr(component, "label", None) or getattr(component, "elem_id", None)
               or type(component).__name__)


def _named(preprocess):
    @functools.wraps(preprocess)
    def wrapper(self, payload, *args, **kwargs):
        try:
            return preprocess(self, payload, *args, **kwargs)
        except gr.Error as exc:
            raise gr.Error(f"{html.escape(_label(self))}: {exc.message}", duration=exc.duration,
                           title="Please check the inputs", print_exception=False) from None
        except Exception:  # a value of the wrong type: Gradio would answer a bare "Error"
            got = html.escape(repr(payload)[:60])
            raise gr.Error(f"{html.escape(_label(self))}: cannot use the value {got} here.",
                           title="Please check the inputs", print_exception=False) from None

    wrapper.names_control = True
    return wrapper


def name_input_errors() -> None:
    """Make the preprocess errors of ``CONTROLS`` name their control (once per process)."""
    for cls in CONTROLS:
        method = cls.__dict__.get("preprocess")
        if method is not None and not getattr(method, "names_control", False):
            cls.preprocess = _named(method)
