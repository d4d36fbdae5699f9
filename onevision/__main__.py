"""``python -m onevision``: the command line (how torchrun relaunches a stage in several processes)."""

from onevision.app.cli import main

main()
