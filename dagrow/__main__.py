"""``python -m dagrow``: the same as the ``dagrow`` command."""

from .cli import main

main()
