"""Hyperparameter search with Optuna over the application's config (``ignite-lstm tune``)."""
