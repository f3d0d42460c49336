"""``python -m xt_training`` runs the ``xt`` command line (also under ``torchrun -m xt_training``)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
