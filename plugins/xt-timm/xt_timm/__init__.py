"""xt-timm: timm's models, data configurations, optimizers and schedulers as an xt-training plugin."""

__version__ = "0.1.0"
