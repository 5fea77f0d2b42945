import argparse
import importlib
import logging
import pkgutil
import sys

import corral.commands


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="Serve several LLMs behind one OpenAI API.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(corral.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"corral.commands.{info.name}").add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        return 130
    except (CLIError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"corral: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
