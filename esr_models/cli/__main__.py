"""``python -m esr_models.cli``: the ``esr`` command."""
import sys

from . import main

sys.exit(main())
