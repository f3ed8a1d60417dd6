"""``python -m ignite_lstm.app COMMAND ...``: the same as ``ignite-lstm COMMAND ...``."""

from ignite_lstm.app.cli import main_exit

main_exit()
