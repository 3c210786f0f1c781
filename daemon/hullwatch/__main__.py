"""`python -m hullwatch`."""

import sys

from hullwatch.cli import main

sys.exit(main())
