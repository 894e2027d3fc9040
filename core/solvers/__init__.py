"""Numerical solvers on tensors: entropic OT (Sinkhorn), the shared-diagonal GMM, Procrustes.

They never see a model, an image or a method's settings, so every test runs without weights.
"""
