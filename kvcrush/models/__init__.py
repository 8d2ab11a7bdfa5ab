"""Model loading: the packaged default, random-weight shapes, and user-supplied safetensors models."""

from kvcrush.models.loading import LoadedModel, cache_dir, load_model, packaged_copy
from kvcrush.models.shapes import SHAPES

__all__ = ["LoadedModel", "cache_dir", "load_model", "packaged_copy", "SHAPES"]
