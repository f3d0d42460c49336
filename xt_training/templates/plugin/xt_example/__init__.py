"""xt-example: an xt-training plugin (the hooks are in ``xt_example.plugin``)."""

__version__ = "0.1.0"
