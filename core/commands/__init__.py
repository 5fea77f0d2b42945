"""CLI subcommands: each module here exposes add_commands(subparsers)."""
