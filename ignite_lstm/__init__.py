"""ignite_lstm: an event-driven PyTorch-Ignite training engine for stateful L = 1 recurrent models."""

__version__ = "0.1.0"
