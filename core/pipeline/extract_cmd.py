"""``python -m core extract`` and the scale-out options of ``eval``: --engine, --address,
--workers, --store.

    python -m core extract --images DATA/imagenet/images --vlm clip-vit-b16 --vfm dinov2-large \\
        --engine ray --address auto --store /shared/fusionlab-store
    python -m core eval --dataset imagenet --root DATA --engine ray --address auto \\
        --store /shared/fusionlab-store

``core.cli.build_parser`` calls :func:`add_parser` once; everything else about these options
lives here. ``eval --engine ray`` fills the store with every split's global image features on
Ray first (``core.pipeline.distributed.prefetcher``), then evaluates as usual, reading them
through the feature cache (text, LaZSL crops and anything left out are computed locally).
"""

from __future__ import annotations

import argparse
import sys

from core import config
from core.pipeline.progress import LineProgress

_PROGRESS = LineProgress()


def _add_engine_args(p: argparse.ArgumentParser, *, store_required: bool) -> None:
    g = p.add_argument_group("scale-out (Ray is optional: pip install -r "
                             f"{config.RAY_REQUIREMENTS})")
    g.add_argument("--engine", default="local", choices=config.ENGINES,
                   help="local: this process (default); ray: Ray Data, decoding on CPU tasks "
                   "and one actor pool per model (GPUs where the cluster has them)")
    g.add_argument("--address", default=None, help="Ray cluster to join ('auto': the one "
                   "`ray start` made on this node); default: start a local one")
    g.add_argument("--workers", type=int, default=None,
                   help="model actors per model (default: one per GPU, else "
                   f"{config.RAY_WORKERS})")
    needed = "; extract and --engine ray need one" if store_required else ""
    g.add_argument("--store", default=None,
                   help="sharded feature store folder, read before the feature cache (on a "
                   f"cluster: a folder every node can write; default ${config.STORE_DIR_ENV})"
                   + needed)


def add_parser(subparsers) -> None:
    """Add ``extract``; give ``eval`` (already added) the engine and store options."""
    p = subparsers.add_parser(
        "extract", help="dataset-size feature extraction into a sharded store (local or Ray)",
        description="Global image features of every image under --images, for each model, "
        "written to the sharded store; images the store has are skipped (resumable).")
    p.add_argument("--images", required=True, help="folder of images (any depth); with "
                   "--engine ray also a URL (s3://bucket/train, gs://..., any fsspec scheme)")
    p.add_argument("--vlm", default=config.DEFAULT_VLM, help="VLM key(s), a comma list")
    p.add_argument("--vfm", default=config.DEFAULT_VFM, help="VFM key(s), a comma list, or none")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: each worker's "
                   "best)")
    p.add_argument("--precision", default=config.PRECISION, choices=config.PRECISIONS)
    _add_engine_args(p, store_required=True)
    p.set_defaults(func=cmd_extract)
    evaluate = subparsers.choices.get("eval")
    if evaluate is not None:
        _add_engine_args(evaluate, store_required=False)
        evaluate.set_defaults(func=_with_engine(evaluate.get_default("func")))


def _store(args, *, required: bool):
    """The FeatureStore of ``--store`` (or the environment's); None when neither is given."""
    from core.pipeline.store import FeatureStore, default_store_dir

    root = args.store or default_store_dir()
    if root is None and required:
        raise ValueError(f"--store: give the store folder (or set {config.STORE_DIR_ENV}); on "
                         "a cluster, a folder every node can write.")
    return None if root is None else FeatureStore(root)


def _ray_check(args) -> None:
    if args.engine == "ray":
        from core.pipeline.ray_engine import require_ray

        require_ray()  # before any work: the message names the requirements file


def cmd_extract(args) -> int:
    from core.cli import model_keys
    from core.pipeline.distributed import StoreJob, list_images, run_local

    keys = model_keys(args)
    job = StoreJob.from_keys([keys["vlm"], *keys["extra_vlms"],
                              *([keys["vfm"]] if keys["vfm"] else []), *keys["extra_vfms"]],
                             args.precision, args.device)
    store = _store(args, required=True)
    _ray_check(args)
    if args.engine == "ray":
        from core.pipeline.ray_engine import run_ray

        summary = run_ray(args.images, job, store, address=args.address, workers=args.workers,
                          progress=_PROGRESS)
    else:
        if "://" in args.images:
            raise ValueError("--images: URLs need --engine ray; the local engine reads folders.")
        files = list_images(args.images)
        if not files:
            raise ValueError(f"--images: no image file under {args.images}.")
        summary = run_local(files, job, store, root=args.images, progress=_PROGRESS)
    _PROGRESS.end_line()
    for skip in summary.skipped:
        print(f"skipped {skip.name}: {skip.reason}", file=sys.stderr)
    print(f"store {store.root}")
    for line in summary.lines():
        print(line)
    return 0


def _with_engine(cmd_eval):
    """``eval`` with --engine: a store to read (and, with ray, to fill first)."""

    def run(args) -> int:
        from core.pipeline.distributed import prefetcher

        store = _store(args, required=args.engine == "ray")
        if args.engine == "ray" and args.no_cache:
            raise ValueError("--engine ray: the features reach the evaluation through the "
                             "feature cache; drop --no-cache.")
        _ray_check(args)
        args.store = store
        if args.engine == "ray":
            args.prefetch = prefetcher("ray", store, address=args.address,
                                       workers=args.workers, progress=_PROGRESS)
        return cmd_eval(args)

    return run
