"""Drop-in acceleration for existing ZSQ research code and torch.ao fake-quant.

    from zsq_engine.compat import accelerate
    report = accelerate(model)     # or: with accelerate(model) as report: ...
    print(report)                  # what was accelerated, what was left alone and why

Recognised (by attributes, no project is imported): BRECQ ``UniformAffineQuantizer`` and
``AdaRoundQuantizer``, QDrop ``LSQFakeQuantize`` / ``LSQPlusFakeQuantize`` /
``FixedFakeQuantize``, Genie ``WeightQuantizer`` and ``ActivationQuantizer``,
``torch.ao.quantization.FakeQuantize`` and ``_LearnableFakeQuantize``. ``round_ste`` and
``lp_loss`` replace the research helpers of the same name. ``accelerate(model, exact=False)``
runs the styles in ``FAST_STYLES`` as one fused kernel per direction (last-bit tolerance, see
:mod:`.fast`). See docs/compat.md.
"""
from .accelerate import AccelerationReport, accelerate, restore
from .detect import detect
from .fast import FAST_FORWARDS
from .functions import lp_loss, round_ste

FAST_STYLES = tuple(FAST_FORWARDS)

__all__ = ["AccelerationReport", "FAST_STYLES", "accelerate", "detect", "lp_loss", "restore", "round_ste"]
