"""tiue: loop-free one-pass text-to-image sampling with the Time-independent Unified Encoder."""

from tiue.attention import TiUECrossAttnProcessor
from tiue.interpolation import interpolate_prompts
from tiue.pipeline import TiUEPipeline, TiUEPipelineOutput
from tiue.sampling import sample
from tiue.schedule import loopfree_coefficients
from tiue.unet import EncoderFeatures, TiUEUNet

__version__ = "0.1.0"

__all__ = [
    "EncoderFeatures",
    "TiUECrossAttnProcessor",
    "TiUEPipeline",
    "TiUEPipelineOutput",
    "TiUEUNet",
    "interpolate_prompts",
    "loopfree_coefficients",
    "sample",
]
