"""ple-platform: monthly bank snapshots -> explainable, regulator-ready product recommendations."""

__version__ = "0.1.0"
