"""VLM x VFM Fusion Lab: training-free fusion of CLIP-like and DINO-like features by optimal
transport.

Solvers (`sinkhorn`, `gmm`, `otfusion`, `gpua`, `lazsl`, `zeroshot`, `metrics`) take tensors and
never see a model or an image; `encoders`, `data`, `cache` and `pipeline` turn images into those
tensors.
"""
