"""The one progress bar every long stage draws (training, export, bench, offline val/predict).

Bars go to stderr, so stdout keeps only results for whatever reads it; Rich is imported on first use, so the
server, which never draws one, does not load it.
"""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool = True, *, stats: bool = False, transient: bool = False) -> Any:
    """A Rich ``Progress`` (description, bar, n/total, elapsed); with ``stats`` a ``{task.fields[stats]}`` column
    for a running figure such as the loss, with ``transient`` the bar is erased when done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]{task.description}" if stats else "{task.description}"), BarColumn(),
               MofNCompleteColumn()]
    if stats:
        columns.append(TextColumn("{task.fields[stats]}"))
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=transient)
