"""Utilities; ``from xt_training.utils import functional as F`` gives ``F.train`` and ``F.test``."""
