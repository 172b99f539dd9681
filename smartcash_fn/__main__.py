"""``python -m smartcash_fn``: the ``smartcash-fn`` command line (see :mod:`smartcash_fn.cli`).

    python -m smartcash_fn train recipes/tiny.toml --set train.epochs=5
"""

import sys

from .cli import main
from .distributed import close, failures_named

with failures_named():  # under torchrun: say which rank failed
    status = main()
close()
sys.exit(status)
