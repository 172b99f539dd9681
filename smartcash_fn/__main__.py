"""``python -m smartcash_fn``: the ``smartcash-fn`` command line (see :mod:`smartcash_fn.cli`).

    python -m smartcash_fn train recipes/tiny.toml --set train.epochs=5
"""

import sys

from .cli import main

sys.exit(main())
