"""Class prompt encoding at real size: 1,000 ImageNet classes x OpenAI's 80 templates.

CLIP ViT-B/16 text tower with random weights (`core.models.realsize`). A sample of the 80,000
prompts, spread evenly over classes and templates, is timed in interleaved rounds (A, B, C, A,
...) for: open_clip's ``encode_text`` on the full 77-token context (the path before this
benchmark), our trimmed forward in fp32 on batches in input order (each batch cut after its last
end-of-text token, exact under the causal mask), ``Encoder.encode_sentences`` (the same, on
batches of prompts sorted by length, so each batch is cut near its own prompts' length), and the
same in int8 and in bf16 (`core.models.bf16_cpu`). The full 80,000 is extrapolated from the
sample, and said so. Class prototypes (the mean of a class's 80 template features, renormalised:
``ensemble_text_features``) are compared in fp32 and bf16 on ``--proto-classes`` classes spread
evenly over the 1,000 (all 1,000 take ~16 min in fp32 on 2 cores). Then the pipeline's cached
text path (``core.pipeline.extraction``) runs twice on ``--cache-classes`` classes x 80
templates in a fresh cache: the second run must hit the cache with zero forward passes.

    python benchmarks/text.py --sample 1024 --repeats 2 --cache-classes 20
    python benchmarks/text.py --skip-full-context --proto-classes 50 --cache-classes 0
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.methods.zeroshot import ensemble_text_features  # noqa: E402
from core.models import load_encoder  # noqa: E402
from core.models.realsize import realsize_models  # noqa: E402
from core.pipeline import extraction  # noqa: E402
from core.pipeline.cache import FeatureCache  # noqa: E402
from core.pipeline.features import LazyEncoder  # noqa: E402

TEMPLATES = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=1024, help="prompts timed per round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache-classes", type=int, default=20,
                        help="classes for the cached pipeline run (0: skip it)")
    parser.add_argument("--skip-full-context", action="store_true",
                        help="leave out the slow 77-token reference (speed-ups are then to the "
                             "unsorted trim)")
    parser.add_argument("--proto-classes", type=int, default=1000,
                        help="classes whose 80-template prototypes are compared, fp32 vs bf16 "
                             "(0: skip)")
    args = parser.parse_args(argv)
    key = realsize_models()["clip"]
    prompts = [t.format(c) for c in IMAGENET_CLASSNAMES for t in TEMPLATES]  # 80,000
    pick = np.linspace(0, len(prompts) - 1, args.sample).round().astype(int)
    sample = [prompts[i] for i in pick]
    fp32 = load_encoder(key, device="cpu")
    int8 = load_encoder(key, device="cpu", precision="int8")
    bf16 = load_encoder(key, device="cpu", precision="bf16")
    tokens = fp32._text_tokenizer()(sample)

    def full_context():  # open_clip's encode_text on all 77 positions, batched like ours
        with torch.inference_mode():
            for i in range(0, len(tokens), args.batch_size):
                fp32.model.encode_text(tokens[i:i + args.batch_size])

    def trimmed_unsorted():  # each batch trimmed to its longest prompt, batches in input order
        with torch.inference_mode():
            for i in range(0, len(tokens), args.batch_size):
                fp32._forward_text(tokens[i:i + args.batch_size])

    paths = {
        "fp32 full context (before)": full_context,
        "fp32 trimmed, input order": trimmed_unsorted,
        "fp32 trimmed": lambda: fp32.encode_sentences(sample, batch_size=args.batch_size),
        "int8 trimmed": lambda: int8.encode_sentences(sample, batch_size=args.batch_size),
        "bf16 trimmed": lambda: bf16.encode_sentences(sample, batch_size=args.batch_size),
    }
    if args.skip_full_context:
        del paths["fp32 full context (before)"]
    times = {name: [] for name in paths}
    loads = []
    for _ in range(args.repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(fp32.model.encode_text(tokens[:256]), dim=-1)
    cos = {"fp32 trimmed": fp32.encode_sentences(sample[:256]),
           "int8 trimmed": int8.encode_sentences(sample[:256]),
           "bf16 trimmed": bf16.encode_sentences(sample[:256])}
    n_tokens = int(tokens.argmax(-1).max()) + 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(sample)} of "
          f"{len(prompts)} prompts (longest {n_tokens} tokens of 77), batch {args.batch_size}, "
          f"best of {args.repeats} interleaved rounds; load average {np.mean(loads):.1f}")
    base = min(times.get("fp32 full context (before)", times["fp32 trimmed, input order"]))
    print(f"{'path':28s} {'prompts/s':>10s} {'speedup':>8s} {'80k est. min':>13s} "
          f"{'worst cos':>10s}")
    for name, t in times.items():
        rate = len(sample) / min(t)
        worst = float((cos[name] * ref).sum(-1).min()) if name in cos else 1.0
        print(f"{name:28s} {rate:10.1f} {base / min(t):8.2f} {len(prompts) / rate / 60:13.1f} "
              f"{worst:10.6f}")
    if args.proto_classes:
        _prototype_cosines(fp32, bf16, args.proto_classes, args.batch_size)

    if args.cache_classes == 0:
        return
    classes = tuple(IMAGENET_CLASSNAMES[:args.cache_classes])
    with tempfile.TemporaryDirectory() as root:
        for run in ("first", "second"):
            model = LazyEncoder(key, "cpu")
            start = time.perf_counter()
            extraction._text_features(model, FeatureCache(root), classes, TEMPLATES)
            print(f"pipeline text features, {len(classes)} classes x {len(TEMPLATES)} templates, "
                  f"{run} run: {time.perf_counter() - start:.2f} s, "
                  f"{model.n_forward} forward passes")


def _prototype_cosines(fp32, bf16, n_classes: int, batch_size: int) -> None:
    """Worst / mean cosine of bf16 class prototypes (80 templates each) to fp32's, with times."""
    picked = np.linspace(0, len(IMAGENET_CLASSNAMES) - 1, n_classes).round().astype(int)
    prompts = [t.format(IMAGENET_CLASSNAMES[c]) for c in picked for t in TEMPLATES]
    protos, seconds = {}, {}
    for name, encoder in (("fp32", fp32), ("bf16", bf16)):
        start = time.perf_counter()
        feats = encoder.encode_sentences(prompts, batch_size=batch_size)
        seconds[name] = time.perf_counter() - start
        protos[name] = ensemble_text_features(feats.reshape(n_classes, len(TEMPLATES), -1))
    cos = (protos["fp32"] * protos["bf16"]).sum(-1)
    print(f"prototypes of {n_classes} classes x {len(TEMPLATES)} templates: worst cos "
          f"{float(cos.min()):.6f}, mean {float(cos.mean()):.6f}; fp32 {seconds['fp32']:.1f} s, "
          f"bf16 {seconds['bf16']:.1f} s ({seconds['fp32'] / seconds['bf16']:.2f}x), load "
          f"average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
