"""The workbook's widgets, one module per notebook's explorer; every one renders its frames once and caches them.

``from course import widgets`` gives them all: ``widgets.forward_process_scrubber`` (02),
``widgets.reverse_process_scrubber`` (03), ``widgets.DDIMExplorer`` (04), ``widgets.AttentionExplorer`` (01),
``widgets.GuidanceExplorer`` (06), ``widgets.PAGExplorer`` (07), ``widgets.TextToImageExplorer`` (08),
``widgets.ControlNetExplorer`` (09) and ``widgets.LoRAScaleExplorer`` (10) and ``widgets.flow_steps_scrubber`` (12).
"""
from .attention import AttentionExplorer
from .controlnet import ControlNetExplorer
from .ddim import DDIMExplorer
from .flow import flow_steps_scrubber
from .guidance import ANY, NONE, GuidanceExplorer
from .ldm import TextToImageExplorer
from .lora import LoRAScaleExplorer
from .pag import PAGExplorer
from .scrubber import TimestepScrubber, forward_process_scrubber, reverse_process_scrubber

__all__ = ["AttentionExplorer", "ControlNetExplorer", "DDIMExplorer", "flow_steps_scrubber", "GuidanceExplorer", "ANY", "NONE",
           "TextToImageExplorer", "LoRAScaleExplorer", "PAGExplorer", "TimestepScrubber", "forward_process_scrubber",
           "reverse_process_scrubber"]
