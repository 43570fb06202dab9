"""didi: ultra-fast text generation with masked discrete diffusion language models."""

from .api import Pipeline, load, train
from .config import RunConfig, preset
from .errors import DidiError
from .sampling import SampleOutput, ancestral_sample

__version__ = "0.1.0"
__all__ = ["DidiError", "Pipeline", "RunConfig", "SampleOutput", "ancestral_sample", "load", "preset", "train"]
