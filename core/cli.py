import argparse
import importlib
import logging
import os
import pkgutil
import sys

import corral.commands
from corral.version import version


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="Serve several LLMs behind one OpenAI API.")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]} (default INFO)")
    parser.add_argument("--version", action="version", version=f"corral version {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(corral.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"corral.commands.{info.name}").add_commands(subparsers)
    return parser


def require_device(device: str | None):
    """A device named on the command line must exist: one line now, before a model is fetched."""
    from corral.config import device_problem
    if device and (problem := device_problem(device)):
        raise CLIError(f"--{problem}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `corral plugins --json | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CLIError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"corral: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m corral.cli: run the imported module, whose CLIError the commands raise
    from corral.cli import main as imported_main
    sys.exit(imported_main())
