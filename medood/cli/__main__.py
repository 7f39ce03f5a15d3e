"""``python -m medood.cli``."""

from __future__ import annotations

import sys

from medood.cli import main

sys.exit(main())
