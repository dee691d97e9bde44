"""`python -m ecaml ...` entry point."""

import sys

from ecaml.cli import main

if __name__ == "__main__":
    sys.exit(main())
