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
from edgekd.settings import BENCH, EXPORT, FIT, OFFLINE, PRUNE, SERVE


def _stages():
    from edgekd.export import export_run
    from edgekd.export.bench import run_bench
    from edgekd.fit import fit
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
        "fit": (FIT, [fit], {}),
        "bench": (BENCH, [run_bench, Export.bench], {"batch": "batches"}),
        "serve": (SERVE, [run_server, create_app, Export.serve], {}),
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
    if command in ("fit", "export") and name in ("students", "fp32_nodes"):
        return tuple(csv_list(value))
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


def test_a_recipe_sets_every_later_stage_and_flags_override_it(tmp_path, monkeypatch, capsys):
    import yaml

    from conftest import run_cli
    from edgekd.config import load_config
    from edgekd.errors import EdgeKDError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "epochs": 3, "model": "resnet8",
        "prune": {"ratio": 0.5, "channel_multiple": 8, "recover_epochs": 2},
        "export": {"int8": True, "calib_samples": 64},
        "bench": {"batches": [1, 8], "seconds": 0.5},
        "serve": {"port": 9100, "max_batch": 16},
    }))
    calls = {}

    def stub(name):
        def record(*args, **kwargs):
            calls[name] = kwargs
            raise EdgeKDError("stopped by the test")
        return record

    for target, name in (("edgekd.recover.prune", "prune"), ("edgekd.export.export_run", "export"),
                         ("edgekd.export.bench.run_bench", "bench"), ("edgekd.serve.server.run_server", "serve")):
        monkeypatch.setattr(target, stub(name))
    run, export = str(tmp_path / "run"), str(tmp_path / "export")
    for args in (["prune", run, "-o", str(tmp_path / "p"), "-c", str(recipe), "--channel-multiple", "4"],
                 ["export", run, "-o", str(tmp_path / "e"), "-c", str(recipe)],
                 ["bench", export, "-c", str(recipe), "--out", str(tmp_path / "b")],
                 ["serve", export, "-c", str(recipe), "--port", "9200"]):
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and "stopped by the test" in err, err
    pruned = calls["prune"]
    assert (pruned["ratio"], pruned["channel_multiple"], pruned["recover_epochs"]) == (0.5, 4, 2)
    assert calls["prune"]["lr"] == PRUNE.lr  # what the recipe leaves out keeps its default
    assert (calls["export"]["int8"], calls["export"]["calib_samples"], calls["export"]["max_drop"]) == (
        True, 64, EXPORT.max_drop)
    assert (tuple(calls["bench"]["batches"]), calls["bench"]["seconds"], calls["bench"]["warmup"]) == (
        (1, 8), 0.5, BENCH.warmup)
    assert (calls["serve"]["port"], calls["serve"]["max_batch"], calls["serve"]["host"]) == (9200, 16, SERVE.host)
    cfg = load_config(recipe)  # training reads the top-level keys and leaves the stages' sections alone
    assert (cfg.epochs, cfg.model) == (3, "resnet8")

    for section, message in (({"prune": {"ratios": 0.5}}, "unknown prune key(s) ratios; valid: ratio"),
                             ({"serve": {"port": "80"}}, "serve.port must be int, got '80'"),
                             ({"bench": {"batches": [1, "8"]}}, "bench.batches must be tuple[int, ...]")):
        recipe.write_text(yaml.safe_dump(section))
        name = next(iter(section))
        args = {"prune": ["prune", run, "-o", str(tmp_path / "p")], "serve": ["serve", export],
                "bench": ["bench", export, "--out", str(tmp_path / "b")]}[name]
        calls.clear()
        code, _, err = run_cli(monkeypatch, capsys, *args, "-c", str(recipe))
        assert code == 2 and message in err and not calls, err  # refused before the stage runs
