"""Neutral helpers every pipeline (synth, recon, qat, runtime, export, commands) may share:
files written atomically and read safely, model fingerprints, forward hooks, augmentations.
It imports no pipeline, so any of them can depend on it (docs/architecture.md)."""
from .augment import random_resized_crop_flip
from .fileio import (FileFormatError, default_file_mode, load_torch_file, save_figure_atomic, save_torch_atomic,
                     write_bytes_atomic, write_text_atomic)
from .fingerprint import model_fingerprint
from .hooks import BNInputRecorder, ModuleRecorder, bn_layers, frozen_teacher

__all__ = ["random_resized_crop_flip", "FileFormatError", "default_file_mode", "load_torch_file",
           "save_figure_atomic", "save_torch_atomic", "write_bytes_atomic", "write_text_atomic",
           "model_fingerprint", "BNInputRecorder", "ModuleRecorder", "bn_layers", "frozen_teacher"]
