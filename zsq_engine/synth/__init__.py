"""Data synthesis from a pretrained model's BatchNorm statistics (no training data).

Methods: ZeroQ (:mod:`.zeroq`), Genie-D (:mod:`.genie`), the GDFQ conditional generator
(:mod:`.gdfq`), HAST hard samples (:mod:`.hast`). Entry point: :func:`synthesize`.
"""
from .api import METHODS, PRESETS, SynthResult, batch_seed, resolve_settings, synthesize
from .gdfq import GDFQGenerator, sample, train_generator
from ..utils import BNInputRecorder, frozen_teacher
from .io import load_output

__all__ = ["METHODS", "PRESETS", "SynthResult", "batch_seed", "resolve_settings", "synthesize", "GDFQGenerator",
           "sample", "train_generator", "BNInputRecorder", "frozen_teacher", "load_output"]
