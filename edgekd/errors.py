"""The one exception type for user mistakes (bad path, bad value, corrupt file).

The CLI prints its message on one line and exits non-zero, without a stack trace.
Raise it with a message that says what was wrong and what to do instead.
"""


import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RANK_ERRORS_ENV = "EDGEKD_RANK_ERRORS"  # set by `--nproc`'s launcher: a folder where ranks leave their messages


class EdgeKDError(Exception):
    """A user-facing error: the message is shown as is, with no traceback."""


def one_line(e: BaseException, limit: int = 300, *, first_line: bool = False) -> str:
    """A library exception's message on one line, for quoting inside an EdgeKDError; its type's name if it has none.

    The first line alone is often only a heading: torch's state_dict errors say which tensors do not fit on the
    lines after "Error(s) in loading state_dict for Model:". ``first_line`` is for messages whose first line says it
    all and whose rest is context (a YAML excerpt, a converter's stack).
    """
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(lines[:1] if first_line else lines) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hand_to_launcher(message: str) -> bool:
    """Under the ``--nproc`` launcher, leave a rank's user-error message for it to print once; False elsewhere."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        return False
    Path(folder, f"rank-{int(os.environ.get('RANK', '0')):05d}").write_text(message, encoding="utf-8")
    return True


def run_command(function: Callable[..., Any], argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a Typer command function as a program of its own (``python -m ...``); returns the exit code.

    A user mistake is one line on stderr and exit code 2, as in the ``edgekd`` CLI; usage errors are click's.
    """
    import click
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(function)
    try:
        typer.main.get_command(app).main(args=list(argv) if argv is not None else None, prog_name=prog_name,
                                         standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    except EdgeKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
