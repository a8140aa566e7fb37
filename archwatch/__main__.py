"""``python -m archwatch``."""

import sys

from archwatch.cli import main

sys.exit(main())
