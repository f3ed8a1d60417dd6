"""The signal-extraction application: its task, config, runs, search, export and serving.

Built on the library (``ignite_lstm.engine``, ``models``, ``handlers``, ...), never imported by it.
"""
