"""The ``farm`` command. The only code that prints.

Commands are imported when they run, and each imports the engine (torch) only if it needs it: the
producer commands (sweep submit, results) work on a machine with only the base install.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import click

from farm.errors import FarmError

# command name -> "module:attribute" under farm.cli
COMMANDS = {
    "quantize": "quantize:quantize",
    "methods": "catalog:methods",
    "layers": "layers:layers",
    "models": "catalog:models",
    "db": "db:db",
    "artifacts": "artifacts:artifacts",
    "sweep": "sweep:sweep",
    "tune": "tune:tune",
    "results": "results:results",
    "report": "report:report",
    "demo": "demo:demo",
    "worker": "worker:worker",
    "workers": "worker:workers",
}


class FarmCliError(click.ClickException):
    """A user's mistake: one red line on stderr, exit status 2."""

    exit_code = 2

    def format_message(self) -> str:
        return click.style(self.message, fg="red")


class LazyGroup(click.Group):
    """A group whose subcommands live in modules imported on first use; maps FarmError to exit 2."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            command = getattr(importlib.import_module(f"farm.cli.{module}"), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Click's resolution, but a mistyped command name is told the nearest one (``farm sweeep``: "Did you mean
        'sweep'?"). Click suggests from ``self.commands`` only, which holds none of the lazy commands."""
        name = click.utils.make_str(args[0]) if args else ""
        if ctx.resilient_parsing or not name or name.startswith("-") or self.get_command(ctx, name) is not None:
            return super().resolve_command(ctx, args)
        if ctx.token_normalize_func is not None and self.get_command(ctx, ctx.token_normalize_func(name)):
            return super().resolve_command(ctx, args)
        close = difflib.get_close_matches(name, self.list_commands(ctx), n=3)
        hint = " Did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""
        raise click.UsageError(f"No such command {name!r}.{hint}", ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FarmError as e:
            raise FarmCliError(str(e)) from None
        except click.UsageError as e:
            # A bad option value (--method nope, --observer bogus) is a user's mistake like any other: one line,
            # not click's usage block. A bare command asking for its help still gets the help.
            if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                raise
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            raise FarmCliError(e.format_message() + where) from None


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quantfarm", prog_name="farm")
def cli() -> None:
    """QuantFarm: quantization sweeps for PyTorch models, from one trial to a farm of workers."""


def main() -> None:
    cli(prog_name="farm")
