"""``python -m noisefast.cli``: the same as the ``noisefast`` command."""

import sys

from noisefast.cli import main

sys.exit(main())
