"""``python -m metarec``: the same as the ``metarec`` command."""

from metarec.cli import main

main()
