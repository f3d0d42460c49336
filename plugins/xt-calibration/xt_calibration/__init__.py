"""xt-calibration: calibration metrics (expected calibration error, Brier score) as an xt-training plugin."""

__version__ = "0.1.0"
