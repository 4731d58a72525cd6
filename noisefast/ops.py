"""TEMPORARY: forwards to the pure-torch reference until the fused kernels land (issue 2)."""
from noisefast.ref import cosine_similarity, ddim_move, momentum_step_  # noqa: F401
