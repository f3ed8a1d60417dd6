"""The application's configuration: schema, loading with overrides, validation, the ``config`` command."""

from ignite_lstm.app.config.schema import Config, ConfigError, load_config, validate_config

__all__ = ["Config", "ConfigError", "load_config", "validate_config"]
