"""``python -m mambamixer``: the command line."""

import sys

from mambamixer.cli import main

if __name__ == "__main__":
    sys.exit(main())
