"""Prove that two checkouts of this project behave bit-identically (e.g. before/after a refactor).

    python scripts/compare_trees.py snapshot --tree /work/old  --out /tmp/snap_old
    python scripts/compare_trees.py snapshot --tree /work/main --out /tmp/snap_new
    python scripts/compare_trees.py compare /tmp/snap_old /tmp/snap_new  # exit 0 iff identical

`snapshot` re-runs this file in a child process with cwd=TREE and PYTHONPATH=TREE (so the tree's
own `core` is imported), one CPU thread, fixed seeds, HF_HUB_OFFLINE=1 and a fresh temporary
FUSIONLAB_CACHE_DIR. The child runs: every solver on synthetic features (sinkhorn in tolerance,
fixed-iteration, masked, log and batched modes; zeroshot_probs; otfusion for each VARIANT, with
labels, with two VFMs; fit_gpua soft/hard; lazsl_scores; the shared-diagonal GMM; metrics);
run_methods on a synthetic FeatureSet with default and non-default settings; extract, run_methods
and segment on assets/examples/{shapes,scenes}.zip with the tiny random-initialised test models;
and the CLI (`python -m core run ...` twice, `models`), in parallel child processes.
Every result is flattened into named items (dataclass fields, dict entries, list elements):
arrays -> arrays.npz, scalars and strings -> values.json, CLI outputs -> text/; timings
("seconds") are dropped and temp/tree paths become <TMP>/<TREE>. `compare` checks each item
exactly (arrays: dtype, shape and bytes; values: their JSON text; texts: equal strings) and prints
one row per item: identical / DIFFERENT (max abs diff) / missing / ERROR (a call raised).

Imports differ between the flat (old) and package (new) layouts of `core`: API lists, per name,
where to look, in order. Fix a path there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

API = {  # name -> "module:attr" candidates, new layout first ("module" alone: the module itself)
    "sinkhorn": ("core.solvers.sinkhorn:sinkhorn", "core:sinkhorn", "core.sinkhorn:sinkhorn"),
    "zeroshot_probs": ("core.methods.zeroshot:zeroshot_probs", "core.zeroshot:zeroshot_probs"),
    "otfusion": ("core.methods.otfusion:otfusion", "core.otfusion:otfusion"),
    "VARIANTS": ("core.methods.otfusion:VARIANTS", "core.otfusion:VARIANTS"),
    "fit_gpua": ("core.methods.gpua:fit_gpua", "core.gpua:fit_gpua"),
    "lazsl_scores": ("core.methods.lazsl:lazsl_scores", "core.lazsl:lazsl_scores"),
    "gmm": ("core.solvers.gmm", "core.gmm"),
    "metrics": ("core.metrics",),
    "make_synthetic": ("core.synthetic:make_synthetic",),
    "run_methods": ("core.methods.run:run_methods", "core.methods:run_methods"),
    "SolverSettings": ("core.methods.run:SolverSettings", "core.methods:SolverSettings"),
    "FeatureSet": ("core.methods.run:FeatureSet", "core.methods:FeatureSet"),
    "METHODS": ("core.methods.run:METHODS", "core.methods:METHODS"),
    "extract": ("core.pipeline.extraction:extract", "core.pipeline:extract"),
    "ExtractSettings": ("core.pipeline.extraction:ExtractSettings",
                        "core.pipeline:ExtractSettings"),
    "FeatureCache": ("core.pipeline.cache:FeatureCache", "core.cache:FeatureCache"),
    "tiny_test_models": ("core.models.tiny:tiny_test_models", "core.testing:tiny_test_models"),
    "load_encoder": ("core.models.load:load_encoder", "core.models:load_encoder",
                     "core.encoders:load_encoder"),
    "load_image_set": ("core.data.images:load_image_set", "core.data:load_image_set"),
    "load_attributes": ("core.data.classes:load_attributes", "core.data:load_attributes"),
    "segment": ("core.pipeline.segmentation:segment", "core.segmentation:segment"),
}
USED: dict[str, str] = {}  # name -> the candidate that imported (meta.json, not compared)
DROP_KEYS = {"seconds", "solver_settings"}  # wall-clock timings: never compared
EXAMPLES = {"shapes": ("circle", "square", "triangle", "star"),
            "scenes": ("sunset", "night sky", "forest", "beach")}
TINY = ("test-tiny-clip-vit", "test-tiny-dinov2")  # the CLI's --vlm / --vfm


def api(name: str):
    errors = []
    for cand in API[name]:
        mod, _, attr = cand.partition(":")
        try:
            obj = importlib.import_module(mod)
            obj = getattr(obj, attr) if attr else obj
        except (ImportError, AttributeError) as exc:
            errors.append(f"{cand}: {exc}")
            continue
        if attr and isinstance(obj, types.ModuleType):  # old tree: `core.sinkhorn` the module
            errors.append(f"{cand}: a module")
            continue
        USED[name] = cand
        return obj
    raise ImportError(f"{name}: no candidate imports: " + "; ".join(errors))


class Sink:
    """Named arrays, JSON values and texts; `add` flattens any result object into them."""

    def __init__(self, tmp: str, tree: str):
        self.arrays, self.values, self.texts = {}, {}, {}
        self.subs = [(tmp, "<TMP>"), (tree, "<TREE>")]

    def norm(self, s: str) -> str:
        for old, new in self.subs:
            s = s.replace(old, new)
        return re.sub(r" at 0x[0-9a-f]+", "", s)

    def add(self, name: str, obj) -> None:
        import numpy as np
        import torch
        from PIL import Image

        if obj is None or isinstance(obj, (bool, int, float, str)):
            self.values[name] = self.norm(obj) if isinstance(obj, str) else obj
        elif isinstance(obj, torch.Tensor):
            t = obj.detach().cpu()
            self.arrays[name] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        elif isinstance(obj, (np.ndarray, np.generic, Image.Image)):
            self.arrays[name] = np.asarray(obj)
        elif isinstance(obj, (bytes, bytearray)):
            self.values[name] = "sha256:" + hashlib.sha256(obj).hexdigest()
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self.add(name, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
        elif isinstance(obj, dict):
            self.values[name + ".keys"] = [str(k) for k in obj]
            for k, v in obj.items():
                if k not in DROP_KEYS:
                    self.add(f"{name}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            if all(v is None or isinstance(v, (bool, int, float, str)) for v in obj):
                self.values[name] = [self.norm(v) if isinstance(v, str) else v for v in obj]
            else:
                for i, v in enumerate(obj):
                    self.add(f"{name}.{i}", v)
        elif not callable(obj):
            self.values[name] = self.norm(repr(obj))

    def run(self, name: str, fn, *args, **kw):
        """Call fn (a callable or an API name), add its result; an exception -> an ERROR item."""
        try:
            result = (api(fn) if isinstance(fn, str) else fn)(*args, **kw)
        except Exception:
            self.values[name + "!error"] = self.norm(traceback.format_exc())
            print(f"{name}: {traceback.format_exc().splitlines()[-1]}", file=sys.stderr)
            return None
        self.add(name, result)
        return result


# ------------------------------------------------------------------ the work (child process)
def _lazsl_inputs(glob, text, n_crops=6, n_attr=4, seed=0):
    """Crops = global view + noise; attributes = prototype + noise, the last padded on even
    classes. All L2-normalised, from a seeded generator."""
    import torch

    g, unit = torch.Generator().manual_seed(seed), lambda x: x / x.norm(dim=-1, keepdim=True)
    glob = unit(glob)
    crops = unit(glob[:, None] + 0.5 * torch.randn(len(glob), n_crops, glob.shape[1], generator=g))
    attrs = unit(text[:, None] + 0.5 * torch.randn(len(text), n_attr, text.shape[1], generator=g))
    mask = torch.ones(len(text), n_attr, dtype=torch.bool)
    mask[::2, -1] = False
    return glob, crops, attrs, mask


def solvers(s: Sink) -> None:
    import torch

    gmm, metrics = api("gmm"), api("metrics")
    for seed, diff in ((0, "default"), (1, "default"), (0, "hard")):
        p = f"syn{seed}_{diff}"
        d = s.run(f"{p}.data", "make_synthetic", 300, 6, seed=seed, difficulty=diff)
        x, t, z, labels = d.vlm_image, d.vlm_text, d.vfm_image, d.labels
        cost = -(x @ t.T)
        mask = torch.rand(cost.shape, generator=torch.Generator().manual_seed(seed)) > 0.3
        s.run(f"{p}.sinkhorn.tol", "sinkhorn", cost, eps=0.01, tol=1e-6)
        s.run(f"{p}.sinkhorn.fixed3", "sinkhorn", cost, eps=0.01, max_iter=3, tol=0)
        s.run(f"{p}.sinkhorn.mask", "sinkhorn", cost, eps=0.05, mask=mask)
        s.run(f"{p}.sinkhorn.log", "sinkhorn", cost, eps=0.05, method="log")
        s.run(f"{p}.sinkhorn.batched", "sinkhorn", cost.reshape(3, 100, -1), eps=0.05, tol=1e-4)
        y = s.run(f"{p}.zeroshot", "zeroshot_probs", x, t)
        s.run(f"{p}.zeroshot_t50", "zeroshot_probs", x, t, temperature=50.0)
        for v in api("VARIANTS"):
            s.run(f"{p}.otfusion.{v}", "otfusion", [z], [y], variant=v)
        s.run(f"{p}.otfusion.labels", "otfusion", [z], [y], labels=labels)
        s.run(f"{p}.otfusion.two_vfm", "otfusion", [z, x], [y], lam=0.5, eps=0.05, tol=0)
        for tag, kw in (("default", {}), ("hard", {"targets": "hard"})):
            a = s.run(f"{p}.gpua.{tag}", "fit_gpua", z, x, t, **kw)
            if a is not None:
                s.run(f"{p}.gpua.{tag}.transform", a.transform, z)
                s.run(f"{p}.gpua.{tag}.predict_proba", a.predict_proba, z, t)
        lz = _lazsl_inputs(x[:40], t, seed=seed)
        s.run(f"{p}.lazsl", "lazsl_scores", *lz, return_plans=True)
        s.run(f"{p}.lazsl.novis", "lazsl_scores", *lz, vision_selection=False, tol=0, max_iter=7)
        s.run(f"{p}.gmm.kmeanspp", gmm.fit_shared_diag_gmm, z, n_components=6, random_state=seed)
        s.run(f"{p}.gmm.init_y", gmm.fit_shared_diag_gmm, z, n_components=6, init_resp=y)
        s.run(f"{p}.metrics.modality_gap", metrics.modality_gap, x, t)
        s.run(f"{p}.metrics.hubness", metrics.hubness, x, t, k=3)
        s.run(f"{p}.metrics.confusion", metrics.confusion_matrix, y.argmax(1), labels, 6)


def methods(s: Sink) -> None:
    import torch

    d = api("make_synthetic")(240, 5, seed=2, difficulty="hard")
    glob, crops, attrs, amask = _lazsl_inputs(d.vlm_image, d.vlm_text, seed=2)
    fs = api("FeatureSet")(vlm_image=glob, text=d.vlm_text, vfm_image=d.vfm_image,
                           crops=torch.cat([glob[:, None], crops], 1), attributes=attrs,
                           attribute_mask=amask, labels=d.labels)
    try:
        other = api("SolverSettings")(
            temperature=50.0, otfusion_lam=0.5, otfusion_eps=0.05, otfusion_iter=4,
            otfusion_variant="concat", gpua_lam=0.7, gpua_targets="hard", gpua_ths_steps=20,
            gpua_concat_vlm=False, lazsl_theta=0.6, lazsl_eps=0.2, seed=3)
    except ImportError:  # branch `settings`: one frozen dataclass per method
        from core.config import (
            GPUASettings,
            LaZSLSettings,
            MethodSettings,
            OTFusionSettings,
            ZeroShotSettings,
        )
        other = MethodSettings(
            clip=ZeroShotSettings(temperature=50.0),
            otfusion=OTFusionSettings(lam=0.5, eps=0.05, n_iter=4, variant="concat"),
            gpua=GPUASettings(lam=0.7, targets="hard", ths_steps=20, concat_vlm=False, seed=3),
            lazsl=LaZSLSettings(theta=0.6, eps=0.2))
        USED["SolverSettings"] = "core.config:MethodSettings"
    s.run("methods.default", "run_methods", fs, api("METHODS"))
    s.run("methods.other", "run_methods", fs, ("lazsl", "gpua", "otfusion"), other)


def _weights_sha256(key: str) -> str:
    h = hashlib.sha256()
    for name, t in api("load_encoder")(key, device="cpu").model.state_dict().items():
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pipeline(s: Sink, tmp: str) -> None:
    keys = api("tiny_test_models")()
    for role, key in sorted(keys.items()):  # the seeded random-init weights themselves
        s.run(f"weights.{role}", _weights_sha256, key)
    ES, Cache = api("ExtractSettings"), api("FeatureCache")
    attributes = api("load_attributes")("assets/examples/attributes.json")
    for kind, classes in EXAMPLES.items():
        images = api("load_image_set")(f"assets/examples/{kind}.zip")
        settings = ES(vlm=keys["clip_vit"], vfm=keys["dinov2"], n_crops=4, attributes=attributes,
                      batch_size=8, device="cpu")
        cache = Cache(Path(tmp) / f"cache_{kind}")
        ex = s.run(f"{kind}.extraction", "extract", images, list(classes), settings, cache=cache)
        s.run(f"{kind}.cached_rerun", "extract", images, list(classes), settings, cache=cache)
        s.run(f"{kind}.no_vfm", "extract", images, list(classes),
              ES(vlm=keys["clip_vit"], vfm=None, device="cpu"), cache=None)
        if ex is not None:
            s.run(f"{kind}.methods", "run_methods", ex.features, api("METHODS"))
            s.run(f"{kind}.segment", "segment", ex, [0, 6], per_class=16, ths_steps=3,
                  cache=Cache(Path(tmp) / f"seg_{kind}"))


def cli_start(tmp: str) -> list:
    """Start the CLI runs, each `python -m core ...` in its own process, beside the rest."""
    common = ["--vlm", TINY[0], "--device", "cpu"]
    runs = {
        "shapes": ["run", "--images", "assets/examples/shapes.zip", "--classes",
                   ", ".join(EXAMPLES["shapes"]), *common, "--vfm", TINY[1],
                   "--methods", "clip,otfusion,gpua,lazsl", "--n-crops", "6", "--ths-steps", "50",
                   "--attributes", "assets/examples/attributes.json"],
        "scenes": ["run", "--images", "assets/examples/scenes.zip", "--classes",
                   "\n".join(EXAMPLES["scenes"]), *common, "--vfm", "none", "--no-cache",
                   "--methods", "otfusion,gpua", "--lam", "0.5", "--variant", "concat",
                   "--gpua-targets", "hard"],
        "models": ["models"],
    }
    procs = []
    for name, args in runs.items():
        out = Path(tmp) / f"cli_{name}"
        args = [*args, "--out", str(out)] if args[0] == "run" else args
        procs.append((name, out, subprocess.Popen([sys.executable, __file__, "_cli", *args],
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True)))
    return procs


def _drop(doc):
    if isinstance(doc, dict):
        return {k: _drop(v) for k, v in doc.items() if k not in DROP_KEYS}
    return [_drop(v) for v in doc] if isinstance(doc, list) else doc


def cli_collect(s: Sink, procs: list) -> None:
    for name, out, proc in procs:
        stdout, stderr = proc.communicate()
        s.add(f"cli.{name}.returncode", proc.returncode)
        s.texts[f"cli.{name}.stdout"] = re.sub(r" *\d+\.\d+ ms", " <ms> ms", s.norm(stdout))
        if proc.returncode != 0:
            s.values[f"cli.{name}!error"] = s.norm(stderr[-3000:])
        if (out / "predictions.csv").exists():
            s.texts[f"cli.{name}.predictions.csv"] = s.norm((out / "predictions.csv").read_text())
            doc = _drop(json.loads((out / "predictions.json").read_text()))
            s.texts[f"cli.{name}.predictions.json"] = s.norm(json.dumps(doc, indent=1))


def _seed() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)


def worker(out: Path) -> int:
    import numpy as np

    tmp = os.environ["COMPARE_TMP"]
    s, timings, procs = Sink(tmp, os.getcwd()), {}, []
    for name, fn in (("cli_start", lambda: procs.extend(cli_start(tmp))),
                     ("solvers", lambda: solvers(s)), ("methods", lambda: methods(s)),
                     ("pipeline", lambda: pipeline(s, tmp)),
                     ("cli", lambda: cli_collect(s, procs))):
        start = time.perf_counter()
        try:  # a whole section fails only on a missing import; calls fail one by one (Sink.run)
            _seed()
            fn()
        except Exception:
            s.values[f"{name}!error"] = s.norm(traceback.format_exc())
            print(traceback.format_exc(), file=sys.stderr)
        timings[name] = round(time.perf_counter() - start, 1)
    core = str(getattr(sys.modules.get("core"), "__file__", None))
    if not core.startswith(os.getcwd() + os.sep):
        s.values["import!error"] = f"core imported from {core}, not from the tree"
    meta = {"core": core, "imports": USED, "seconds": timings}
    (out / "text").mkdir(parents=True, exist_ok=True)
    np.savez(out / "arrays.npz", **s.arrays)
    (out / "values.json").write_text(json.dumps(s.values, indent=1))
    for name, text in s.texts.items():
        (out / "text" / name).write_text(text)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return 1 if any("!error" in k for k in s.values) else 0


def cli_child(argv: list[str]) -> int:
    """`python -m core ARGV` after registering the tiny test models in this process."""
    import runpy

    _seed()
    api("tiny_test_models")()
    sys.argv = ["python -m core", *argv]
    try:
        runpy.run_module("core", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


# ------------------------------------------------------------------ the commands (parent)
def snapshot(tree: Path, out: Path) -> int:
    tree, out = tree.resolve(), out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise SystemExit(f"--out {out}: exists and is not a snapshot; refusing to replace it.")
    shutil.rmtree(out, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix="compare_trees_")
    env = dict(os.environ, PYTHONPATH=str(tree), COMPARE_TMP=tmp,
               FUSIONLAB_CACHE_DIR=f"{tmp}/cache",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    try:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_worker", str(out)],
                            cwd=tree, env=env).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"snapshot of {tree} -> {out}: {time.perf_counter() - start:.1f} s, exit {rc}"
          + ("" if rc == 0 else " (some calls raised: see ERROR items / stderr above)"))
    return rc


def _load(snap: Path):
    import numpy as np

    with np.load(snap / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    texts = {f"text/{p.name}": p.read_text() for p in sorted((snap / "text").iterdir())}
    return arrays, json.loads((snap / "values.json").read_text()), texts


def _array_diff(a, b) -> str:
    import numpy as np

    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
    if a.dtype.kind in "fiub" and a.size:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return f"max abs diff {np.nanmax(d) if not np.isnan(d).all() else 'nan'}"
    return "contents differ"


def _value_diff(u, v) -> str:
    if isinstance(u, list) and isinstance(v, list) and len(u) == len(v):
        i = next(i for i, (p, q) in enumerate(zip(u, v)) if json.dumps(p) != json.dumps(q))
        return f"first at [{i}]: {u[i]!r} vs {v[i]!r}"
    return f"{repr(u)[:50]} vs {repr(v)[:50]}"


def compare(a: Path, b: Path) -> int:
    (arr_a, val_a, txt_a), (arr_b, val_b, txt_b) = _load(a), _load(b)
    raised = tuple(n.split("!error")[0] + "." for n in {*val_a, *val_b} if "!error" in n)
    rows = []
    for kind, x, y in (("array", arr_a, arr_b), ("value", val_a, val_b), ("text", txt_a, txt_b)):
        for name in sorted(set(x) | set(y)):
            if "!error" in name:
                status, detail = "ERROR", (x.get(name) or y.get(name)).strip().splitlines()[-1]
            elif name not in x or name not in y:
                status, detail = "missing", f"only in {'A' if name in x else 'B'}"
                if name.startswith(raised):
                    detail += f" ({[r[:-1] for r in raised if name.startswith(r)][0]} raised)"
            else:
                if kind == "array":
                    u, v = x[name], y[name]
                    same = u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes()
                    detail = f"{u.dtype}{list(u.shape)}" if same else _array_diff(u, v)
                else:
                    same = json.dumps(x[name]) == json.dumps(y[name])
                    detail = "" if same else _value_diff(x[name], y[name])
                status = "identical" if same else "DIFFERENT"
            rows.append((kind, name, status, detail))
    width = max(len(r[1]) for r in rows)
    for kind, name, status, detail in rows:
        print(f"{kind:5s}  {name:{width}s}  {status:9s}  {detail}")
    for tag, snap in (("A", a), ("B", b)):
        meta = json.loads((snap / "meta.json").read_text())
        print(f"{tag} = {snap}: core from {meta['core']}, seconds {meta['seconds']}")
    bad = [r for r in rows if r[2] != "identical"]
    counts = ", ".join(f"{sum(r[2] == k for r in bad)} {k}"
                       for k in ("DIFFERENT", "missing", "ERROR"))
    print(f"{len(rows)} items: {len(rows) - len(bad)} identical; {counts}")
    return 1 if bad else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker(Path(argv[1]))
    if argv[:1] == ["_cli"]:
        return cli_child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot", help="run everything in TREE, save the outputs under OUT")
    s.add_argument("--tree", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="compare two snapshots A and B; exit 0 iff identical")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args(argv)
    return snapshot(args.tree, args.out) if args.cmd == "snapshot" else compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
