"""xt-vision: torchvision's model zoo and image data sets as an xt-training plugin."""

__version__ = "0.1.0"
