"""The command line: help texts, and one-line errors (exit 2, no traceback) for user mistakes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli


def test_help_lists_every_command(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    panel = out.split("─ Commands ─", 1)[1].split("╰", 1)[0]
    listed = re.findall(r"^│ (\S+) +\S", panel, flags=re.MULTILINE)  # one row per command, wrapped lines start blank
    from edgekd.cli import app

    assert sorted(listed) == sorted(c.callback.__name__ for c in app.registered_commands), out
    assert {"train", "distill", "methods", "models", "datasets", "prune", "export", "bench", "serve"} <= set(listed)


def test_datasets_table_shows_every_spec_whole_at_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(monkeypatch, capsys, "datasets")
    assert code == 0 and "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    for spec in ("digits", "synthetic", "cifar10:ROOT", "cifar100:ROOT", "imagefolder:PATH", "tiny-imagenet:PATH"):
        assert f"│ {spec} " in out


def test_distill_help_points_to_the_methods_table_which_lists_every_registered_method(monkeypatch, capsys):
    from edgekd.methods import list_methods, method_class

    code, out, _ = run_cli(monkeypatch, capsys, "distill", "--help")
    assert code == 0 and "edgekd methods" in out and "--teacher-arch" in out and "--rectify" in out
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(monkeypatch, capsys, "methods")
    rows = re.findall(r"^│ (\S+) +│ (\S+(?: \S+)?) +│", out, flags=re.MULTILINE)
    assert code == 0 and [name for name, _ in rows] == list_methods()
    for name, teacher in rows:
        cls = method_class(name)
        assert teacher == ("needed" if cls.needs_teacher else "its own" if cls.uses_teacher else "none")
    assert "alpha=0.9, T=4.0" in " ".join(out.split())  # kd's options and their defaults


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "resnet9000", "--epochs", "1"], "unknown model"),
        # was a 25 GB allocation
        (["models", "--num-classes", "100000000"], "num_classes must be an integer from 1 to 100,000"),
        (["train", "--epochs", "-3"], "epochs must be > 0"),
        (["train", "--data", "imagefolder:/no/such/folder", "--epochs", "1"], "/no/such/folder"),
        (["train", "--data", "mnist", "--epochs", "1"], "unknown dataset"),
        (["distill", "--method", "nope", "--epochs", "1"], "unknown method"),
        (["distill", "--teacher", "/no/teacher", "--method", "kd", "--epochs", "1"], "does not exist"),
        (["export", "/no/run", "--out", "/tmp/never-written"], "does not exist"),
        (["export", "/no/run", "--out", "/tmp/never-written", "--max-drop", "1"], "add --int8 or drop --max-drop"),
        (["export", "/no/run", "--out", "/tmp/never-written", "--int8", "--max-drop", "half"], "'none', got 'half'"),
        (["train", "--config", "/no/recipe.yaml"], "does not exist"),
        (["distill", "--arg", "alpha"], "KEY=VALUE"),
        (["train", "--epochs", "3", "--schedule", "multistep", "--milestones", "5"],
         "milestones [5] must lie strictly between 0 and epochs (3)"),
        (["distill", "--milestones", "x,2"], "--milestones takes comma-separated integers"),
        (["serve", "/no/export"], "export dir /no/export does not exist"),
        (["report", "/no/such[/]"], "/no/such[/] is not a directory"),  # plain text, not Rich markup
        (["export", "/no/[bold]run", "--out", "/tmp/never-written"], "run dir /no/[bold]run does not exist"),
        (["serve", "/no/export", "--port", "99999"], "port must be between 1 and 65535"),
        (["serve", "/no/export", "--threads", "0"], "threads must be >= 1"),
        (["serve", "/no/export", "--max-batch", "100000000"], "max_batch must be at most 1024"),
        (["bench", "/no/export", "--remote", "bad host:x"], "bad SSH target 'bad host:x'"),  # before the local bench
        (["bench", "/no/export", "--remote", "pi@h", "--ssh-port", "0"], "SSH port must be between 1 and 65535"),
        (["serve", "/no/export", "--queue-size", "0", "--max-pixels", "100"], "queue_size and max_pixels must be >= 1"),
        (["serve", "/no/export", "--log-level", "loud"], "unknown log level"),
        (["serve", "/no/export", "--runtime", "tensorrt"], "unknown runtime 'tensorrt'"),
        (["train", "--init", "/no/run", "--epochs", "1"], "run dir /no/run does not exist"),
        (["distill", "--method", "kd", "--init", ".", "--epochs", "1"], ". is not an edgekd run dir"),
        (["distill", "--epochs", "1"], "distill needs --method"),
        (["prune", "/no/run", "-o", "p", "--ratio", "0.3", "--target-macs", "0.5"], "either --ratio or --target-macs"),
        (["prune", "/no/run", "-o", "p", "--method", "l1-unstructured"], "pass --prune-method l1-unstructured"),
        (["prune", "/no/run", "-o", "p", "--recover-epochs", "2"], "run dir /no/run does not exist"),
    ],
)
def test_user_mistakes_are_one_line_errors(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) <= 2  # one message (Rich may wrap a long line once)


def test_corrupt_checkpoint_via_cli(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(monkeypatch, capsys, "train", "--model", "resnet8", "--epochs", "1", "--out", str(run),
                           "--resume")
    assert code == 2 and "cannot be resumed" in err


def test_resume_continues_with_the_runs_own_config(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    first = ("train", "--model", "resnet8", "--image-size", "16", "--batch-size", "128", "--epochs", "1",
             "--out", str(run))
    assert run_cli(monkeypatch, capsys, *first)[0] == 0
    code, _, err = run_cli(monkeypatch, capsys, "train", "--out", str(run), "--epochs", "2", "--resume")
    assert code == 0, err  # no --model: resnet8 and 16 px come from run/config.yaml, --epochs from the flag
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and json.loads((run / "model.json").read_text())["arch"] == "resnet8"


def test_a_file_in_the_way_of_out_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for args in (("train", "--model", "resnet8", "--epochs", "1", "--out", str(blocker)),
                 ("train", "--model", "resnet8", "--epochs", "1", "--out", str(blocker / "sub")),
                 ("export", str(tmp_path), "--out", str(blocker))):
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and "choose another --out" in err and "Traceback" not in out + err, (args, err)


def test_ctrl_c_says_interrupted_and_exits_130(monkeypatch, capsys):
    import edgekd.data

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(edgekd.data, "list_datasets", interrupted)
    code, _, err = run_cli(monkeypatch, capsys, "datasets")
    assert code == 130 and err.strip() == "interrupted"


def test_a_training_command_on_a_device_install_says_what_to_install():
    blocked = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "sys.argv = ['edgekd', 'datasets']\n"
        "from edgekd.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("needs the training side (torch is not installed): install the train extra "
            "(pip install '.[train]' in a checkout)" in proc.stderr)


def test_entry_point_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "edgekd", "train", "--epochs", "0"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "epochs must be > 0" in proc.stderr and "Traceback" not in proc.stderr


def test_empty_milestones_flag_clears_a_recipes_milestones(monkeypatch, capsys, tmp_path):
    """`--milestones ''` replaces the recipe's 150,180,210 with the epoch fractions, so a 3-epoch multistep run is
    valid: the run gets as far as the recipe's (absent) data folder."""
    recipe = Path(__file__).resolve().parents[1] / "configs" / "cifar100" / "resnet32x4_resnet8x4.yaml"
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "distill", "-c", str(recipe), "--epochs", "3")
    assert code == 2 and "milestones [150, 180, 210]" in err
    code, _, err = run_cli(monkeypatch, capsys, "distill", "-c", str(recipe), "--epochs", "3", "--milestones", "")
    assert code == 2 and "milestones [" not in err and "data/cifar-100-python is not a directory" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "/dev/null"], "/dev/null is a file, not a folder"),
        (["--device", "foo"], "device must be one of auto, cpu, cuda"),
    ],
)
def test_demo_refuses_bad_options_before_its_first_stage(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "demo", "--quick", *args)
    assert (code, out) == (2, "") and message in err
    assert list(tmp_path.iterdir()) == []


def test_a_training_only_install_runs_the_cli_without_the_device_packages(tmp_path):
    """`pip install '.[train]'` has no uvicorn, FastAPI or prometheus-client: the CLI must still load and train."""
    device_only = ["uvicorn", "httptools", "uvloop", "fastapi", "starlette", "multipart", "prometheus_client"]
    script = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {device_only!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
sys.argv = ["edgekd", *sys.argv[1:]]
from edgekd.cli import main
main()
"""
    run = [sys.executable, "-c", script]
    help_text = subprocess.run([*run, "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--body-timeout" in help_text.stdout, help_text.stderr[-2000:]
    trained = subprocess.run([*run, "train", "--data", "synthetic", "--model", "resnet8", "--epochs", "1",
                              "--out", str(tmp_path / "run"), "--device", "cpu"], capture_output=True, text=True,
                             timeout=300)
    assert trained.returncode == 0 and (tmp_path / "run" / "model.safetensors").is_file(), trained.stderr[-2000:]


def test_every_help_reads_whole_at_80_columns(monkeypatch, capsys):
    """Grouped panels, nothing cut with an ellipsis, no line past 80 columns."""
    from edgekd.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    for command in app.registered_commands:
        code, out, _ = run_cli(monkeypatch, capsys, command.callback.__name__, "--help")
        assert code == 0 and "…" not in out and max(map(len, out.splitlines())) <= 80, command.callback.__name__
    code, out, _ = run_cli(monkeypatch, capsys, "distill", "--help")
    assert all(f"─ {panel} " in out for panel in ("Data and model", "Method and teacher", "Optimization", "Run"))
