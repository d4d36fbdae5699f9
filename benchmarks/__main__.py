"""``python -m benchmarks run [--quick]``: every comparison side by side on one page (benchmarks/run.py)."""

from __future__ import annotations

import sys

USAGE = """usage: python -m benchmarks run [--quick] [--root PROJECT] [options]

  run    measure everything side by side and write benchmarks/results.md (--quick: benchmarks/results/run_quick.md)

`python -m benchmarks run --help` explains the options; each benchmarks/<name>.py also runs alone."""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] != "run":
        print(f"unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    from benchmarks.run import main as run  # lazy: torch and faiss load only for a run

    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
