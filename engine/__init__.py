"""qtui engine: everything that computes. Imports no UI library (textual, rich, plotext)."""

__version__ = "0.1.0"
