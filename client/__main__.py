"""``python -m client`` is ``stt-client``."""

import sys

from client.cli import main

sys.exit(main())
