"""Generator-based zero-shot quantization-aware training: GDFQ, ZAQ and HAST.

    from zsq_engine.qat import train_qat
    result = train_qat(teacher, "hast", wbits=4, abits=4, input_shape=(1, 28, 28), num_classes=10,
                       preset="fast", checkpoint="run.ckpt")
    student = result.student     # a quantize_model()-style fake-quant model, BN folded

Modules: :mod:`.config` (settings and presets), :mod:`.student` (the quantized student),
:mod:`.generators` (ZAQ's generator; GDFQ's comes from :mod:`zsq_engine.synth.gdfq`),
:mod:`.losses` (KD, ZAQ relation, HAST feature alignment), :mod:`.taps` (feature hooks),
:mod:`.methods` (per-method objectives), :mod:`.sources` (generator / hard-sample pool batches),
:mod:`.loop` (the shared training loop), :mod:`.checkpoint` (atomic, resumable checkpoints).
"""
from .config import METHODS, PRESET_NAMES, QATConfig, make_config, preset_table
from .generators import GDFQGenerator, ZAQGenerator
from .losses import channel_attention, channel_relation, feature_alignment, kd_kl, relation_loss, spatial_relation
from .loop import QATResult, QATTrainer, distillation_gap, train_qat
from .methods import METHOD_CLASSES, GDFQMethod, HASTMethod, ZAQMethod
from .student import build_student
from .taps import FeatureTaps, block_names, stage_names

__all__ = ["METHODS", "PRESET_NAMES", "QATConfig", "make_config", "preset_table", "GDFQGenerator", "ZAQGenerator",
           "kd_kl", "spatial_relation", "channel_relation", "relation_loss", "channel_attention",
           "feature_alignment", "QATTrainer", "QATResult", "train_qat", "distillation_gap", "METHOD_CLASSES",
           "GDFQMethod", "ZAQMethod", "HASTMethod", "build_student", "FeatureTaps", "stage_names", "block_names"]
