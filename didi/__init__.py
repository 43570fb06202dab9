"""didi: ultra-fast text generation with masked discrete diffusion language models."""

__version__ = "0.1.0"
