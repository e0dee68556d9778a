"""One set of defaults: every command's options, the Python API and the library functions behind them take theirs
from one place (``edgekd.config.TrainConfig`` for training, ``edgekd.settings`` for every later stage)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import typer

from edgekd.api import Run
from edgekd.cli import app
from edgekd.config import TrainConfig
from edgekd.contracts.values import csv_list, int_list
from edgekd.exported import Export
from edgekd.settings import BENCH, EXPORT, OFFLINE, PRUNE, SERVE


def _stages():
    from edgekd.export import export_run
    from edgekd.export.bench import run_bench
    from edgekd.recover import prune
    from edgekd.serve.app import create_app
    from edgekd.serve.offline import Classifier
    from edgekd.serve.server import run_server
    from edgekd.serve.val import run_val

    # command -> (its defaults, the functions that must agree, {CLI option or parameter: settings name})
    return {
        "train": (TrainConfig(), [], {}),
        "distill": (TrainConfig(), [], {"student": "model"}),
        "prune": (PRUNE, [prune, Run.prune], {}),
        "export": (EXPORT, [export_run, Run.export], {}),
        "bench": (BENCH, [run_bench, Export.bench], {"batch": "batches"}),
        "serve": (SERVE, [run_server, create_app, Export.serve],
                  {"header_timeout_s": "header_timeout", "body_timeout_s": "body_timeout"}),
        "val": (OFFLINE, [run_val], {}),
        "predict": (OFFLINE, [Classifier.predict], {}),
    }


# commands that have no stage defaults to share: listings, the report of a folder, and the demo's fixed recipe
NO_STAGE = {"methods", "models", "datasets", "report", "demo"}


def _cli_value(command: str, name: str, value):
    """A CLI default as the library spells it (bench takes comma-separated lists)."""
    if command == "bench" and name == "precisions":
        return tuple(csv_list(value))
    if command == "bench" and name == "batch":
        return tuple(int_list(value, "--batch"))
    return value


def test_every_command_takes_its_defaults_from_its_stage_settings():
    stages = _stages()
    commands = typer.main.get_command(app).commands
    assert set(commands) == set(stages) | NO_STAGE  # a new command says where its defaults live
    for command, (settings, functions, renamed) in stages.items():
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        covered = set()
        for param in commands[command].params:
            name = renamed.get(param.name, param.name)
            if name not in fields:
                continue
            covered.add(name)
            cli = _cli_value(command, param.name, param.default)
            # None: the library's default applies (a recipe or a flag may set it)
            assert cli is None or cli == fields[name], (command, param.name, cli, fields[name])
            stated = re.search(r"\(default:? ([^;,()\s]+?)[.)]?(?:[;,)]|$)", param.help or "")
            if stated and fields[name] is not None:
                assert stated.group(1) == str(fields[name]), (command, param.name, param.help)
        if not isinstance(settings, TrainConfig):
            assert covered == set(fields), (command, set(fields) - covered)  # each stage default is an option
        for function in functions:
            for name, p in inspect.signature(function).parameters.items():
                name = renamed.get(name, name)
                if name in fields and p.default is not inspect.Parameter.empty and p.default is not None:
                    assert p.default == fields[name], (command, function.__qualname__, name)


@pytest.mark.parametrize("function, field", [
    ("edgekd.prune:prune_model", "ratio"), ("edgekd.prune:prune_run", "ratio"),
    ("edgekd.recover:prune_and_recover", "ratio"), ("edgekd.prune:prune_run", "channel_multiple"),
])
def test_the_pruning_functions_default_to_the_prune_settings(function, field):
    """Issue 34: `edgekd prune` took 0.3 while prune_model, prune_run and prune_and_recover took 0.1."""
    import importlib

    module, name = function.split(":")
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    assert signature.parameters[field].default == getattr(PRUNE, field)
