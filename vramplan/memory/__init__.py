"""The analytic memory model: one pure function per term, combined over phases."""

from vramplan.memory.phases import PHASES, Estimate, estimate

__all__ = ["PHASES", "Estimate", "estimate"]
