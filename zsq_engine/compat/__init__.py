"""Drop-in acceleration for existing ZSQ research code and torch.ao fake-quant.

    from zsq_engine.compat import accelerate
    report = accelerate(model)     # or: with accelerate(model) as report: ...
    print(report)                  # what was accelerated, what was left alone and why

Recognised (by attributes, no project is imported): BRECQ ``UniformAffineQuantizer`` and
``AdaRoundQuantizer``, QDrop ``LSQFakeQuantize`` / ``LSQPlusFakeQuantize`` /
``FixedFakeQuantize``, Genie ``WeightQuantizer`` and ``ActivationQuantizer``,
``torch.ao.quantization.FakeQuantize`` and ``_LearnableFakeQuantize``. ``round_ste`` and
``lp_loss`` replace the research helpers of the same name. See docs/compat.md.
"""
from .accelerate import AccelerationReport, accelerate, restore
from .detect import detect
from .functions import lp_loss, round_ste

__all__ = ["AccelerationReport", "accelerate", "detect", "lp_loss", "restore", "round_ste"]
