"""`python -m keyswarm ...`: the `keyswarm` command (see `keyswarm.cli`)."""

import sys

from keyswarm.cli import main

if __name__ == "__main__":
    sys.exit(main())
