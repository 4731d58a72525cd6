"""noisefast: diffusion noise selection and optimization by inversion stability."""
from noisefast import ops, ref
from noisefast.denoisers import Condition, Denoiser

__version__ = "0.1.0"
__all__ = ["Condition", "Denoiser", "ops", "ref"]
