"""The evaluation harness: reproduce the papers' tables on the 11 benchmarks or any labelled folder.

    python -m core eval --dataset oxford_pets --root DATA --vlm clip-vit-b16 --vfm dinov2-large \
        --methods clip,otfusion,gpua,lazsl --attributes-dir descriptors/ --out results/
    python -m core eval --all --root DATA --gpua-shots 16 --sweep

Protocol (OTFusion / GPUA papers): the dataset's single CoOp prompt (``DatasetPreset.template``),
one center crop of 224 per image in each encoder's own preprocessing (CLIP: short side 224;
DINOv2 / DINOv3: their eval transform, short side 256; SigLIP alone is squashed to 224 x 224, as
its processor does), and

- CLIP zero-shot and OTFusion (transductive) on the test split. OTFusion runs in its main setting
  (every VLM's image features and every VFM: Table 1) unless ``--otfusion-setting`` picks an
  ablation (``vfm_only``: Table 2 "DINOv2-only"; ``vlm_only``: "CLIP-only"), once per recipe of
  ``--otfusion-recipes`` (default ``paper,official``) on the same features; each row names its
  recipe, its protocol (``paper_numbers.otfusion_protocol``: the paper row beside it) and its
  sources. The official recipe (the authors' CVPR 2026 code) is compared with the v1 paper's
  table, the only published numbers we hold. ``--otfusion-shots N`` runs the official code's
  inductive mode instead: fitted on N unlabeled train images per class, the test split scored
  without OT (protocol "inductive", no paper number);
- GPUA fitted on the *unlabeled* train split (all of it, or ``--gpua-shots 16`` images per class
  with ``--seed``: GPUA*; the labels only pick a class-balanced pool, as GPUA* does, the fit never
  sees them) and applied to the test split. ``--gpua-fit test`` fits on the test images instead
  (transductive; no paper number). A dataset without a train split falls back to that, with a note;
- LaZSL with the DCLIP-format descriptors the user supplies (``--attributes FILE`` or
  ``--attributes-dir DIR`` holding ``<dataset>.json`` / ``descriptors_<dataset>.json``). Without
  them LaZSL is skipped with a note; ``--lazsl-class-names`` runs it with the class name as the only
  descriptor, labelled "LaZSL (class names)": not the paper's protocol.

Outputs in ``--out``: ``<dataset>_<vlm>_<vfm>.md/.csv/.json`` (accuracy per method, the papers'
number beside it and the difference, n images, settings, extraction vs solve seconds),
``sweep_*.md/.csv`` with ``--sweep`` (OTFusion lam x eps, Fig. 2), ``summary_*`` with ``--all``.

A whole table of a paper: ``python -m core repro TABLE_ID --root DATA`` (registry ``tables``,
runner ``repro``, command line ``repro_cli``; ``--tables`` lists them and what each needs).

Memory: images are read ``--chunk-size`` files at a time; a split's features stay in memory
(ImageNet val with ViT-B/16 + DINOv2-L: 0.3 GB; + 1.7 GB for the default 16 LaZSL crops, 9.3 GB
for the paper's 90); use ``--gpua-shots 16`` on ImageNet (its full train split needs ~16 GB).
Several VLMs / VFMs (``--vlm a,b --vfm c,d``) are fused by OTFusion; the other methods use the
first of each. Code: ``harness`` (one dataset through every method), ``records`` (its config and
results), ``splits`` (a split's features, train pools), ``report`` (tables), ``paper_numbers``
(the papers' reported numbers); the command line is in ``core.cli``; defaults in ``core.config``.
Segmentation (GPUA Tables 2 and 8): ``seg_command`` (``python -m core seg-eval``, its parser and
handler) and ``seg_report`` (tables, ``SEGMENTATION_TABLES``); the evaluation itself is
``core.pipeline.seg_eval``, the benchmarks' readers ``core.data.segmentation_sets``.
Features are cached per image content, so reruns with other solver settings only re-solve.
"""
