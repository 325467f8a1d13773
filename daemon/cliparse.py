"""The command line's parts: a parser whose errors are one line, boolean flags, value checks, user errors.

Contract (docs/cli.md): a user error — a bad flag or value, a missing or unreadable
file, input that cannot be scored, Kafka unreachable, a timeout — is one line on
stderr, ``featsieve <command>: <what is wrong>``, and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import zlib
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn


class UserError(Exception):
    """A mistake of the user's (not a bug): main() prints it as one line and exits 2."""


class _Formatter(argparse.HelpFormatter):
    """Shows a boolean setting as ``--name, --no-name`` (its optional old-style value is documented)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolFlag):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)

    def _format_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None) -> str:
        # booleans in the usage line as [--name | --no-name]
        text = super()._format_usage(usage, actions, groups, prefix)
        for action in actions:
            if isinstance(action, BoolFlag):
                text = text.replace(f"[{action.option_strings[0]} [BOOL]]", f"[{action.format_usage()}]")
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage is one ``--help`` away)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class BoolFlag(argparse.Action):
    """``--name`` / ``--no-name`` for a boolean setting, and the old ``--name true|false`` spelling.

    Stores the raw string ("true"/"false"/whatever was given) so that the settings loader
    validates it like an env or TOML value and names the setting when it is wrong.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        positive = option_strings[0]
        negative = "--no-" + positive[2:]
        super().__init__([positive, negative], dest, nargs="?", metavar="BOOL", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value (write {self.option_strings[0]} {values})")
            values = "false"
        setattr(namespace, self.dest, "true" if values is None else values)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def version() -> str:
    """The installed package's version (its metadata), or ``unknown`` when run from a bare checkout."""
    try:
        return metadata.version("featsieve")
    except metadata.PackageNotFoundError:
        return "unknown"


def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], need: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {need}") from None
        if value != value or not test(value):  # NaN never passes
            raise argparse.ArgumentTypeError(f"{text!r} is not {need}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1")
nonneg_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number > 0")
nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "a number in 0..1")
open_fraction = _number(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")


def progress_wanted(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress`` if given, else only when stderr is a terminal (JSON stays clean)."""
    chosen = getattr(args, "progress", None)
    return sys.stderr.isatty() if chosen is None else bool(chosen)


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar (total, rate, ETA) on stderr; default: only when stderr is a terminal")


def user_error_message(exc: BaseException, args: argparse.Namespace,
                       bootstrap: Sequence[str] = ()) -> str | None:
    """The one-line message for an exception that is a user error, None for anything else (a bug)."""
    from daemon.config import ConfigError

    if isinstance(exc, ConfigError | UserError):
        return str(exc)
    tabular = sys.modules.get("daemon.tools.tabular")
    if tabular is not None and isinstance(exc, tabular.InputError):
        return str(exc)
    evaluate = sys.modules.get("daemon.tools.evaluate")
    if evaluate is not None and isinstance(exc, evaluate.EvaluationError):
        return str(exc)
    if isinstance(exc, EOFError | gzip.BadGzipFile | zlib.error) and getattr(args, "input", None):
        return f"{args.input} is not a complete gzip file ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        where = getattr(args, "input", None) or "the input"
        return f"{where} is not UTF-8 text (byte {exc.start}: {exc.reason})"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    errors = sys.modules.get("kafka.errors")
    if errors is not None and isinstance(exc, errors.KafkaError):
        from connectors.kafka_io import connection_cause

        servers = ",".join(bootstrap) or "the bootstrap servers"
        return f"cannot use Kafka at {servers}: {connection_cause(exc)}"
    return None


def one_line(text: str) -> str:
    return " ".join(text.split())
