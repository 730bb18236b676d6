"""The `sollol` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from sollol.plugins import Plugins

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Command]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Command], Command]:
    """Register a subcommand."""

    def add(fn: Command) -> Command:
        COMMANDS[name] = (help, configure, fn)
        return fn

    return add


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("plugins", "list the installed plugins and what each provides", _json_flag)
def plugins_command(args: argparse.Namespace) -> int:
    """`sollol plugins`."""
    plugins = Plugins.load()
    if args.json:
        print(json.dumps(plugins.as_json(), indent=2))
        return 0
    console = Console()
    table = Table(title="SOLLOL plugins")
    for column in ("plugin", "distribution", "version", "backends", "policies", "sources"):
        table.add_column(column)
    for info in plugins.infos:
        table.add_row(
            info.name,
            info.distribution or "-",
            info.version or "-",
            ", ".join(info.backends) or "-",
            ", ".join(info.policies) or "-",
            ", ".join(info.sources) or "-",
        )
    console.print(table)
    for failure in plugins.failures:
        where = failure.distribution or "unknown distribution"
        console.print(f"[red]plugin {failure.name} ({where}) failed to load:[/red] {failure.reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    # Subcommands living in other modules register themselves on import.
    from sollol import cli_commands  # noqa: F401

    parser = argparse.ArgumentParser(prog="sollol", description="Run a cluster of local LLM servers as one.")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, fn) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text)
        configure(child)
        child.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sollol` command."""
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
