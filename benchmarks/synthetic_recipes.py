"""OTFusion's two recipes on every synthetic preset (accuracies, not timed tests).

For each preset of ``core.synthetic.features.PRESETS``, each number of classes and each seed it
draws ``--n`` images and reports the accuracy of

- CLIP zero-shot: argmax of ``zeroshot_probs`` (100 * cosine, softmax) of the primary VLM;
- OTFusion ``recipe="paper"`` and ``recipe="official"`` in the main setting:
  ``vfm_features=[VLM image features, VFM features...]`` (``SyntheticData.visual_sources``) and
  ``vlm_probs=[zero-shot probabilities of each VLM]``, every other option at its recipe's default;

with the geometry that explains them: the mean cosine of an image to its class mean (VLM images,
first VFM), the mean cosine of an image to its own class's text prototype, CLIP's mean confidence
(mean max probability; calibrated when it is near the zero-shot accuracy), the nearest-class-mean
accuracy of the VLM images and of the first VFM (nearest true class direction, an oracle: how
well their clusters separate), and the official recipe's
final weights of its visual sources (adaptive).

    python benchmarks/synthetic_recipes.py                      # all presets, k 20 and 100, 3 seeds
    python benchmarks/synthetic_recipes.py --presets hard clip-b16-dinov2-l --classes 20 --seeds 0
    python benchmarks/synthetic_recipes.py --presets clip-b16-dinov2-l --set d_vlm=96 d_vfm=96
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.methods.otfusion import otfusion  # noqa: E402
from core.methods.zeroshot import zeroshot_probs  # noqa: E402
from core.metrics import accuracy, class_mean_cosine, mean_assigned_cosine  # noqa: E402
from core.synthetic.features import PRESETS, make_synthetic  # noqa: E402

RECIPES = ("paper", "official")


def nearest_class_mean_accuracy(x, means, labels) -> float:
    """Accuracy of assigning each row of ``x`` (n, d) to the nearest of the true, noise-free class
    directions ``means`` (k, d) (cosine): how well the clusters separate, with no estimation."""
    return accuracy((x @ means.T).argmax(1), labels)  # (n, k)


def measure(n: int, k: int, seed: int, preset: str, **knobs) -> dict:
    """One draw of ``make_synthetic(n, k, seed=seed, difficulty=preset, **knobs)``: accuracies of
    zero-shot and both recipes, and the geometry (module docstring)."""
    ds = make_synthetic(n, k, seed=seed, difficulty=preset, **knobs)
    ys = [zeroshot_probs(x, t) for x, t in zip(ds.vlm_images, ds.vlm_texts)]
    row = {"zero-shot": accuracy(ys[0].argmax(1), ds.labels)}
    for recipe in RECIPES:
        res = otfusion(list(ds.visual_sources), ys, recipe=recipe)
        row[recipe] = accuracy(res.pred, ds.labels)
        if recipe == "official":
            row["eta"] = res.eta
    row["confidence"] = float(ys[0].max(1).values.mean())
    row["cos VLM"] = class_mean_cosine(ds.vlm_image, ds.labels)
    row["cos VFM"] = class_mean_cosine(ds.vfm_image, ds.labels)
    row["img-txt"] = mean_assigned_cosine(ds.vlm_image, ds.vlm_text, ds.labels)
    row["VLM NCM"] = nearest_class_mean_accuracy(ds.vlm_image, ds.vlm_class_means, ds.labels)
    row["VFM NCM"] = nearest_class_mean_accuracy(ds.vfm_image, ds.vfm_class_means, ds.labels)
    row["dims"] = "/".join(str(x.shape[1]) for x in ds.visual_sources)
    return row


def _mean(rows, key) -> float:
    return statistics.fmean(r[key] for r in rows)


def _sd(rows, key) -> float:
    return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0


def table(presets, classes, seeds, n, knobs) -> None:
    print(f"OTFusion recipes on synthetic presets: {n} images, seeds {list(seeds)}, mean +- sd "
          "over seeds (accuracy in %). Main setting: [VLM image, VFMs...], [zero-shot probs]."
          + (f" Knobs set: {knobs}." if knobs else ""))
    print("| preset | dims | K | zero-shot | paper | official | paper - zs | official - zs | "
          "official eta | conf | cos VLM | cos VFM | img-txt | VLM NCM | VFM NCM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in presets:
        for k in classes:
            rows = [measure(n, k, seed, preset, **knobs) for seed in seeds]
            cells = [f"{100 * _mean(rows, key):.1f} +- {100 * _sd(rows, key):.1f}"
                     for key in ("zero-shot", *RECIPES)]
            gains = [f"{100 * statistics.fmean(r[key] - r['zero-shot'] for r in rows):+.1f}"
                     for key in RECIPES]
            eta = tuple(statistics.fmean(r["eta"][i] for r in rows)
                        for i in range(len(rows[0]["eta"])))
            geometry = [f"{_mean(rows, key):.2f}"
                        for key in ("confidence", "cos VLM", "cos VFM", "img-txt")]
            print(f"| {preset} | {rows[0]['dims']} | {k} | {' | '.join(cells)} | "
                  f"{' | '.join(gains)} | {'/'.join(f'{e:.2f}' for e in eta)} | "
                  f"{' | '.join(geometry)} | {100 * _mean(rows, 'VLM NCM'):.1f} | "
                  f"{100 * _mean(rows, 'VFM NCM'):.1f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--classes", nargs="+", type=int, default=[20, 100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="+", default=[], metavar="KNOB=VALUE",
                        help="override make_synthetic knobs, e.g. --set d_vlm=96 d_vfm=96")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table(args.presets, args.classes, args.seeds, args.n, dict(_knob(s) for s in args.set))


def _knob(text: str) -> tuple[str, float | int]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set: expected KNOB=VALUE, got {text!r}.")
    return key, int(value) if value.lstrip("-").isdigit() else float(value)


if __name__ == "__main__":
    main()
