"""``python -m ignite_lstm.app.serve MODEL ...``."""

import sys

from ignite_lstm.app.serve.cli import main

sys.exit(main())
