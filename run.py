"""Train a stateful L = 1 LSTM: ``python run.py configs/base.yaml [key=value ...]``."""

import sys

from ignite_lstm.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
