"""``python -m hilbed.orchestrator.cli``: the same as the ``hilbed`` command."""

import sys

from hilbed.orchestrator.cli.main import main

sys.exit(main())
