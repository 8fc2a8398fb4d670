"""``python -m numbaloss``: the command line (see ``numbaloss.cli``)."""

import sys

from .cli import main

sys.exit(main())
