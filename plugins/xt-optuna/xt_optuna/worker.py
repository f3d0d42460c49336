"""A worker process of ``xt tune --jobs N``: ``python -m xt_optuna.worker SESSION_JSON``.

It loads the plugins the parent loaded and runs its share of the trials on the shared storage
(:func:`xt_optuna.tuning.work`). Exit status: 0 done, 2 an error (printed as one line), 130 interrupted.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    from xt_training import registry
    from xt_training.errors import XtError

    from .tuning import work

    session = json.loads((argv if argv is not None else sys.argv[1:])[0])
    try:
        registry.load(session["plugins"])
        work(session)
    except KeyboardInterrupt:
        return 130
    except XtError as e:
        print(f"xt: error: worker {session['worker']}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
