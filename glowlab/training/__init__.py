"""Lightning training: the module, callbacks, schedules and run helpers."""

from glowlab.training.callbacks import ReconstructionMonitor, SampleGrid
from glowlab.training.module import FlowModule, NonFiniteLossError

__all__ = ["FlowModule", "NonFiniteLossError", "ReconstructionMonitor", "SampleGrid"]
