"""The Metrics tab: accuracy per method, per-class accuracy, the confusion matrix and the most
confident mistakes of the compared method."""

from __future__ import annotations

import torch

from core.metrics import confusion_matrix, per_class_accuracy
from demo import plots
from demo.state import Session

MISTAKES_SHOWN = 24


def metrics_views(session: Session, compare: str):
    """(note, accuracy fig, per-class fig, confusion fig, mistakes gallery items)."""
    if not session.has_labels:
        note = ("**No labels, so no accuracy.** Put each class's images in a folder named after "
                "the class inside the zip (e.g. `cat/001.jpg`), or upload a labels CSV "
                "(`filename,label`), and Run again. The Predictions tab still compares methods.")
        return note, None, None, None, []
    labels = session.labels
    known = labels >= 0
    names = session.class_names
    k = len(names)
    acc = {session.title(m): session.results[m].accuracy for m in session.methods}
    per_class = {
        session.title(m): per_class_accuracy(session.results[m].pred[known], labels[known],
                                             k).tolist()
        for m in session.methods
    }
    res = session.results[compare]
    conf = confusion_matrix(res.pred[known], labels[known], k)
    title = session.title(compare)
    n_known = int(known.sum())
    note = (f"Accuracy over the {n_known} labelled image(s). The confusion matrix and the "
            f"mistakes below are for **{title}** (pick another method in the Predictions tab).")
    if n_known < len(labels):
        note += f" {len(labels) - n_known} image(s) have no label in the class list."
    wrong = torch.nonzero(known & (res.pred != labels)).flatten()
    confidence = res.probs[wrong, res.pred[wrong]]
    order = wrong[torch.argsort(confidence, descending=True)][:MISTAKES_SHOWN].tolist()
    mistakes = []
    for i in order:
        pred = int(res.pred[i])
        # Two short lines under the thumbnail, the rest on hover (as the gallery's captions).
        mistakes.append((session.thumbs[i], f"✗ {names[pred]} {float(res.probs[i, pred]):.0%}\n"
                         f"true: {names[int(labels[i])]}\n{title}\n{session.names[i]}"))
    return (
        note,
        plots.accuracy_figure(acc, baseline=session.title("clip"), title="Accuracy per method"),
        plots.per_class_figure(per_class, names),
        plots.confusion_figure(conf, names, title=f"Confusion matrix - {title}"),
        mistakes,
    )
