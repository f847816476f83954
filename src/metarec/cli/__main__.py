"""``python -m metarec.cli``: the same as the ``metarec`` command."""

from metarec.cli import main

main()
