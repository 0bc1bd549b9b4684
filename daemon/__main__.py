"""`python -m flakescan.daemon ...` is the `flakescan` command."""

import sys

from .cli import main

sys.exit(main())
