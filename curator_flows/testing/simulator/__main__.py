"""``python -m curator_flows.testing.simulator``: serve in the foreground."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
