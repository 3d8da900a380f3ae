"""`python -m memharbor` is the `memharbor` console script."""

import sys

from memharbor.cli import main

sys.exit(main())
