"""`python -m serving.embedded`: the same command as `python -m serving.model_server`."""

import sys

from serving.embedded.cli import main

if __name__ == "__main__":
    sys.exit(main())
