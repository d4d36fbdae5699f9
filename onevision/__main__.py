"""``python -m onevision``: the command line (how torchrun relaunches a stage in several processes)."""

from onevision.cli import main

main()
