"""``python -m slicekit``: the same as the ``slicekit`` command."""
import sys

from .cli import main

sys.exit(main())
