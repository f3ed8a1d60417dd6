"""``ignite-lstm config``: print a config resolved against the schema, or the key table of the configuration reference."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from omegaconf import OmegaConf

from ignite_lstm.app.config.fields import commented_yaml, markdown_table
from ignite_lstm.app.config.schema import Config, ConfigError, _defaults, load_config, validate_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm config") -> int:
    """``ignite-lstm config [CONFIG [key=value ...]] [--markdown]``; returns the exit status.

    Prints the complete resolved config (the schema's defaults without CONFIG), every key
    with its help text as a YAML comment; a bad config exits 2 with the messages of ``run.py``.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0, or 2 for a bad config or bad arguments.

    Example:
        >>> main(["configs/base.yaml", "train.epochs=5"])  # prints the YAML
        0
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print a config resolved against the schema: every key, its value and its help text.",
        epilog="Example: ignite-lstm config configs/base.yaml train.lr=1e-3",
    )
    parser.add_argument(
        "config", nargs="?", help="YAML config file, e.g. configs/base.yaml (none: the schema's defaults)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-3")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the key table of the configuration reference (docs/reference/configuration.md) instead",
    )
    args = parser.parse_args(argv)
    defaults = _defaults()
    if args.markdown:
        if args.config:
            parser.error("--markdown takes no config: the table shows the schema's defaults")
        print(markdown_table(Config, defaults), end="")
        return 0
    try:
        cfg = load_config(args.config, args.overrides) if args.config else validate_config({})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["ignite-lstm config", *([args.config] if args.config else []), *args.overrides])
    print(
        f"# {command}\n"
        '# The complete config, every key with its help text; "(schema default: X)" marks a value set\n'
        "# differently from the schema (ignite_lstm/config.py). python run.py reads this output as it is."
    )
    print(commented_yaml(Config, OmegaConf.to_container(cfg), defaults), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
