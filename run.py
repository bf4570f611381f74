"""Entry point: ``python run.py <command>`` (the same as the ``tie`` script)."""

import sys

from router.cli import main

if __name__ == "__main__":
    sys.exit(main())
