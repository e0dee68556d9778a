"""`edgekd fit`: the search on a deterministic latency (MACs), resume, the per-device cache, and the real measured
path here and over SSH for the budgets that end early (already met, cannot be met)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from edgekd.errors import EdgeKDError
from edgekd.fit import fit
from test_remote import connect, sshd  # noqa: F401  (the fixture: a real sshd on loopback)

TINY = {"finetune_steps": 8, "recover_epochs": 0, "batch_size": 32, "seconds": 0.2, "calib_samples": 16,
        "compare_uniform": False}


def _by_macs(monkeypatch, calls: list) -> None:
    """Latency = MACs / 1e6 ms instead of an export and a bench: the search's logic, without timing noise."""
    def measure(self, model, relative, desc):
        import torch_pruning as tp

        macs, _ = tp.utils.count_ops_and_params(model, self.example)
        reference, _ = tp.utils.count_ops_and_params(self.teacher, self.example)
        calls.append(macs)
        timing = {"p50_ms": macs / 1e6, "p90_ms": macs / 1e6, "spread": 0.0, "unstable": False}
        return {**timing, "ratio": macs / reference} if relative else timing

    monkeypatch.setattr("edgekd.fit._Search._measure_export", measure)


def test_the_search_cuts_the_group_that_keeps_most_accuracy_until_the_budget_is_met(
        monkeypatch, capsys, digits_run_dir, tmp_path):
    import edgekd.fit as module

    calls: list = []
    _by_macs(monkeypatch, calls)
    shown: list[tuple[str, str]] = []  # the progress display's lines
    real_show = module._Search.show

    def spy(self, figures, phase=None):
        real_show(self, figures, phase)
        shown.append((self.phase, figures))

    monkeypatch.setattr(module._Search, "show", spy)
    record = json.loads(json.dumps(fit(digits_run_dir, tmp_path / "fit", 8.0, **{**TINY, "compare_uniform": True},
                                       step=0.2, cache_dir=tmp_path / "cache", progress=True)))
    base = record["baseline"]["latency_ms"]
    assert base > 8.0 and record["state"] == "done"
    latencies = [s["chosen"]["latency_ms"] for s in record["steps"]]
    assert latencies[-1] <= 8.0 < min(latencies[:-1] + [base])  # it stops at the first step within the budget
    previous = base
    for s in record["steps"]:  # each step reaches its goal (or, if no group can, gets faster) with its most
        assert s["goal_ms"] == pytest.approx(max(8.0, previous * 0.8))  # accurate candidate
        reached = s["goal_ms"] if s["goal_met"] else previous - 1e-9
        assert all(c["latency_ms"] <= reached and c["keep"] % 16 == 0 for c in s["candidates"])
        assert s["chosen"]["accuracy"] == max(c["accuracy"] for c in s["candidates"])
        uniform = s["uniform"]  # the MACs target's model at the choice's MACs, for the report's comparison
        assert uniform["group"].startswith("--target-macs ") and uniform["macs"] <= s["chosen"]["macs"]
        assert 0 < uniform["accuracy"] <= 1 and uniform["latency_ms"] == pytest.approx(uniform["macs"] / 1e6)
        previous = s["chosen"]["latency_ms"]
    assert record["final"]["export"] == str(tmp_path / "fit" / "export")
    assert 0 < record["final"]["ratio"] < 1.5 and record["final"]["reference_p50_ms"] > 0  # timed beside the unpruned
    assert (tmp_path / "fit" / "export" / "manifest.json").is_file() and (tmp_path / "fit" / "model.json").is_file()
    shapes = json.loads((tmp_path / "fit" / "model.json").read_text())["layer_shapes"]
    assert shapes, "the fitted model is pruned"
    assert 0 < record["baseline"]["accuracy"] <= 1 and all(0 < s["chosen"]["accuracy"] <= 1 for s in record["steps"])

    # the progress display says which step, which candidate, and the latency so far; the log prints above it
    first = record["steps"][0]
    assert shown[0] == ("measuring the unpruned model", "")
    step_one = f"step 1: {base:.3f} -> {first['goal_ms']:.3f} ms (budget 8)"
    assert any(phase == step_one and figures.startswith("measuring ") and " channels" in figures
               for phase, figures in shown)
    assert (step_one, f"fine-tuning {first['chosen']['group']} -> {first['chosen']['keep']} channels "
                      f"({first['chosen']['latency_ms']:.3f} ms)") in shown
    assert shown[-1] == ("measuring the export", str(tmp_path / "fit" / "export"))
    search = module._Search.__new__(module._Search)  # the recovery's trainer callback, on a search of its own
    search.run_dir, search.phase, search.status = digits_run_dir, "", lambda *line: None
    module._epochs_shown(search, 6, f"recovering with KD from {digits_run_dir}").on_epoch_start(
        type("Trainer", (), {"epoch": 2})())
    assert shown.pop() == (f"recovering with KD from {digits_run_dir}", "epoch 3/6")
    err = capsys.readouterr().err
    assert f"step 1: from {base:.3f} ms to {first['goal_ms']:.3f} ms" in err and "final onnx-int8:" in err

    from edgekd.report import build_report

    page = build_report(tmp_path / "fit").read_text()
    section = page.split("<h2>Latency budget searches (edgekd fit)</h2>")[1].split("<h2>")[0]
    assert section.count("<img") == 1 and "a fit&#x27;s measured candidates" in section

    # the same fit again: every shape it measured is in the device's cache
    before = len(calls)
    again = fit(digits_run_dir, tmp_path / "again", 8.0, **TINY, step=0.2, cache_dir=tmp_path / "cache")
    assert len(calls) == before and again["baseline"]["cached"]
    assert [s["chosen"]["group"] for s in again["steps"]] == [s["chosen"]["group"] for s in record["steps"]]


def test_a_fit_stopped_mid_search_resumes_where_it_stopped(monkeypatch, digits_run_dir, tmp_path):
    _by_macs(monkeypatch, [])
    import edgekd.fit as module

    real_save = module._Search.save

    def stop_after_the_first_step(self):
        real_save(self)
        if len(self.record["steps"]) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(module._Search, "save", stop_after_the_first_step)
    with pytest.raises(KeyboardInterrupt):
        fit(digits_run_dir, tmp_path / "fit", 8.0, **TINY, step=0.2, cache_dir=tmp_path / "cache")
    saved = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert saved["state"] == "searching" and len(saved["steps"]) == 1
    monkeypatch.setattr(module._Search, "save", real_save)
    with pytest.raises(EdgeKDError, match="already exists and is not empty; pass --resume"):
        fit(digits_run_dir, tmp_path / "fit", 8.0, **TINY, cache_dir=tmp_path / "cache")
    resumed = fit(digits_run_dir, tmp_path / "fit", 99.0, resume=True, cache_dir=tmp_path / "cache")  # its budget
    assert resumed["budget_ms"] == 8.0 and resumed["steps"][0] == saved["steps"][0] and len(resumed["steps"]) > 1
    fresh = fit(digits_run_dir, tmp_path / "fresh", 8.0, **TINY, step=0.2, cache_dir=tmp_path / "cache")
    assert [s["chosen"]["group"] for s in resumed["steps"]] == [s["chosen"]["group"] for s in fresh["steps"]]


def test_a_budget_already_met_is_exported_as_is(monkeypatch, capsys, digits_run_dir, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "fit", str(digits_run_dir), "--budget-ms", "1000", "-o",
                             str(tmp_path / "fit"), "--seconds", "0.2", "--recover-epochs", "0")
    assert code == 0, err
    record = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert record["steps"] == [] and record["state"] == "done" and record["final"]["meets_budget"]
    assert "already meets 1000 ms: exported as it is" in " ".join(out.split())
    manifest = json.loads((tmp_path / "fit" / "export" / "manifest.json").read_text())
    assert "onnx-int8" in manifest["artifacts"] and record["machine"]["cpu"]
    assert 0 < record["final"]["p50_ms"] == record["final"]["latency_ms"] < 1000


def test_a_budget_no_candidate_can_meet_is_one_line_naming_the_best_latency(digits_run_dir, tmp_path):
    with pytest.raises(EdgeKDError, match=r"the budget of 0\.0001 ms cannot be met: the smallest candidate \(every "
                                          r"layer group at 16 channels\) measures \d+\.\d{3} ms p50"):
        fit(digits_run_dir, tmp_path / "fit", 1e-4, **TINY, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "fit").exists()


@pytest.mark.parametrize("options, message", [
    ({"budget_ms": 0}, "--budget-ms must be > 0"),
    ({"metric": "p99"}, "--metric must be one of p50, p90"),
    ({"step": 1.5}, "--step must be between 0 and 1"),
    ({"runtime": "tensorrt"}, "--runtime must be one of"),
    ({"precision": "int4"}, "--precision must be one of"),
])
def test_bad_options_are_one_line_before_any_work(digits_run_dir, tmp_path, options, message):
    with pytest.raises(EdgeKDError, match=message):
        fit(digits_run_dir, tmp_path / "fit", **{"budget_ms": 1.0, **options})
    assert not (tmp_path / "fit").exists()


def test_the_measurements_are_taken_on_the_device_over_ssh(sshd, digits_run_dir, tmp_path):  # noqa: F811
    record = fit(digits_run_dir, tmp_path / "fit", 1000.0, **TINY, remote=sshd["dest"], remote_python=sys.executable,
                 ssh_port=sshd["port"], identity=sshd["identity"], ssh_options=tuple(sshd["ssh_options"]),
                 cache_dir=tmp_path / "cache")
    assert record["machine"]["target"] == sshd["dest"] and record["final"]["meets_budget"]
    cache = tmp_path / "cache" / "latency.json"  # the unpruned model, keyed by the device that measured it, unless
    assert len(json.loads(cache.read_text())) == 1 if not record["baseline"]["unstable"] else not cache.exists()
    # its rounds disagreed (a busy machine): an unstable reading is never cached
    assert Path(record["final"]["export"], "manifest.json").is_file()
    assert connect(sshd)["port"] == sshd["port"]


def test_an_over_budget_final_measurement_is_taken_again_and_the_median_used(monkeypatch, digits_run_dir, tmp_path):
    """One slow reading (a busy machine) must neither fail a fit nor pass one: up to three, the median counts."""
    readings = iter([1.0, 3.0, 1.5, 1.6])  # the unpruned model (met as is), then the final export three times

    def measure(self, export_dir, reference=None):
        ms = next(readings)
        self.machine = {"cpu": "test", "host": "test"}
        return {"p50_ms": ms, "p90_ms": ms, "spread": 0.0, "unstable": False}

    monkeypatch.setattr("edgekd.latency.Target.measure", measure)
    record = fit(digits_run_dir, tmp_path / "fit", 2.0, **TINY, cache_dir=tmp_path / "cache")
    assert record["final"]["measurements"] == [1.5, 1.6, 3.0] and record["final"]["latency_ms"] == 1.6
    assert record["final"]["meets_budget"] and record["final"]["qat_epochs"] == 0


def test_a_final_miss_because_the_machine_slowed_is_told_apart_from_a_slow_model(monkeypatch, digits_run_dir, tmp_path):
    """The budget is in ms, read at the start; the final reading is timed beside the unpruned model, and when the
    ratio is within the budget's the log says the machine moved, not the model (the fit still reports the miss)."""
    _by_macs(monkeypatch, [])

    def measure(self, export_dir, reference=None):
        assert reference is not None and (reference / "manifest.json").is_file()
        self.machine = {"cpu": "test", "host": "test"}
        return {"p50_ms": 9.0, "p90_ms": 9.0, "spread": 0.0, "unstable": False, "reference_p50_ms": 30.0,
                "reference_p90_ms": 30.0, "ratio": 0.3}

    monkeypatch.setattr("edgekd.latency.Target.measure", measure)
    lines: list[str] = []
    record = fit(digits_run_dir, tmp_path / "fit", 8.0, **TINY, step=0.2, cache_dir=tmp_path / "cache",
                 log=lines.append)
    base = record["baseline"]["latency_ms"]
    assert record["final"]["measurements"] == [9.0] * 3 and not record["final"]["meets_budget"]
    assert lines[-2] == (f"the unpruned model now measures 30.000 ms against {base:.3f} ms when the budget was set: "
                         f"timed together, the fitted model is 0.300x of it, within the budget's {8 / base:.3f}x; the "
                         "machine is slower, not the model")


def test_students_that_cannot_meet_the_budget_are_dropped_and_the_most_accurate_of_the_rest_is_fitted(
        monkeypatch, digits_run_dir, tmp_path):
    import torch
    import torch_pruning as tp

    from edgekd.models import create_model
    from edgekd.prune import layer_groups, prune_group
    from edgekd.rundir import load_model

    _by_macs(monkeypatch, [])
    _, desc = load_model(digits_run_dir)
    example = torch.zeros(1, *desc["input_size"])

    def ms(name: str, smallest: bool) -> float:  # in the stub's ms (MACs / 1e6); smallest: every group at 16
        model = create_model(name, desc["num_classes"])
        for group, channels in layer_groups(model, example).items() if smallest else ():
            model = prune_group(model, example, group, 16) if channels > 16 else model
        return tp.utils.count_ops_and_params(model, example)[0] / 1e6

    budget = 1.01 * ms("resnet14", smallest=False)  # resnet14 and resnet8 meet it as they are; resnet32 cannot
    assert ms("resnet32", smallest=True) > budget > ms("resnet8", smallest=False)
    record = fit(digits_run_dir, tmp_path / "fit", budget, **TINY, students=("resnet32", "resnet14", "resnet8"),
                 student_epochs=1, cache_dir=tmp_path / "cache")
    students = record["students"]
    rows = {r["name"]: r for r in students["candidates"]}
    assert list(rows) == ["resnet32", "resnet14", "resnet8"]
    for r in rows.values():  # measured beside the run's model; dropped exactly when even its smallest misses
        assert r["full_ms"] >= r["smallest_ms"] > 0
        assert r["why"].startswith("dropped" if r["smallest_ms"] > budget else "kept")
        assert (r["accuracy"] is None) == r["why"].startswith("dropped")
    assert rows["resnet32"]["why"].startswith("dropped: even with every layer group at 16 channels it measures")
    assert all(rows[n]["why"].startswith("kept: meets the budget at full width") for n in ("resnet14", "resnet8"))
    kept = [r for r in rows.values() if r["accuracy"] is not None]
    assert len(kept) == 2 and students["chosen"] == max(kept, key=lambda r: r["accuracy"])["name"]
    assert rows[students["chosen"]]["why"].endswith("; the most accurate: fitted")
    chosen_run = tmp_path / "fit" / "students" / students["chosen"]
    assert students["run"] == str(chosen_run) and (chosen_run / "summary.json").is_file()
    # then the chosen student is fitted: its own unpruned model is the baseline (here it meets the budget as it is)
    assert record["state"] == "done" and record["baseline"]["macs"] == rows[students["chosen"]]["macs"]
    manifest = json.loads((tmp_path / "fit" / "export" / "manifest.json").read_text())
    assert manifest["arch"] == students["chosen"] and manifest["source_run"] == str(chosen_run.resolve())

    import edgekd.models

    real_create = edgekd.models.create_model

    def create(name, num_classes):  # a student that cannot be built at this input is dropped, not the fit's end
        if name == "resnet14":
            raise RuntimeError("no such input")
        return real_create(name, num_classes)

    monkeypatch.setattr(edgekd.models, "create_model", create)
    with pytest.raises(EdgeKDError, match=r"the budget of 0\.001 ms cannot be met by any of the students: resnet14 "
                                          r"it could not be measured \(RuntimeError: no such input\); resnet8 "
                                          r"\d+\.\d{3} ms at its smallest; raise the budget or name smaller students"):
        fit(digits_run_dir, tmp_path / "none", 0.001, **TINY, students="resnet14,resnet8", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "none").exists()
    with pytest.raises(EdgeKDError, match="did you mean resnet8x4"):
        fit(digits_run_dir, tmp_path / "typo", 8.0, students=("resnet8x5",))
    assert not (tmp_path / "typo").exists()


def test_layer_precision_keeps_in_fp32_the_layers_that_make_the_model_faster(monkeypatch, digits_run_dir, tmp_path):
    """Timing stubbed by layer: the model is 10 % faster with its second layer in FP32 and no faster with any other,
    so that layer, and only it, stays FP32 in the exported artifact and in the manifest."""
    import onnx

    from edgekd.export.formats.onnx import quantizable_nodes

    _by_macs(monkeypatch, [])
    slow: list[str] = []

    def measure(self, export_dir, reference=None):
        self.machine = {"cpu": "test", "host": "test"}
        timing = {"p50_ms": 5.0, "p90_ms": 5.0, "spread": 0.0, "unstable": False}
        if reference is None or not (export_dir / "manifest.json").is_file():
            return timing
        quantized = json.loads((export_dir / "manifest.json").read_text())["artifacts"]["onnx-int8"]["quantization"]
        if not slow:
            graph = onnx.load(str(export_dir / "model.int8.onnx")).graph.node
            slow.append(quantizable_nodes(graph)[1])
        new = set(quantized["fp32_nodes"]) - set(
            json.loads((reference / "manifest.json").read_text())["artifacts"]["onnx-int8"]["quantization"]
            ["fp32_nodes"])
        return {**timing, "reference_p50_ms": 5.0, "reference_p90_ms": 5.0, "ratio": 0.9 if new == set(slow) else 1.0}

    monkeypatch.setattr("edgekd.latency.Target.measure", measure)
    lines: list[str] = []
    record = fit(digits_run_dir, tmp_path / "fit", 8.0, **TINY, step=0.2, cache_dir=tmp_path / "cache",
                 layer_precision=True, log=lines.append)
    tried = record["layer_precision"]["tried"]
    assert len(tried) >= 4 and [t["node"] for t in tried if t["fp32"]] == slow
    assert record["layer_precision"]["fp32_nodes"] == slow
    manifest = json.loads((tmp_path / "fit" / "export" / "manifest.json").read_text())
    fp32 = manifest["artifacts"]["onnx-int8"]["quantization"]["fp32_nodes"]  # (and any the accuracy bound added)
    assert fp32[: len(slow)] == slow and record["final"]["fp32_nodes"] == fp32
    graph = onnx.load(str(tmp_path / "fit" / "export" / "model.int8.onnx")).graph
    weights = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    by_name = {n.name: n for n in graph.node}
    assert by_name[slow[0]].input[1] not in weights  # its weight is read in FP32, not dequantized
    assert all(by_name[t["node"]].input[1] in weights for t in tried if t["node"] not in fp32)
    assert f"  {slow[0]} in FP32: 0.900x the model's latency: kept in FP32" in lines

    with pytest.raises(EdgeKDError, match="--layer-precision .* needs --runtime ort --precision int8"):
        fit(digits_run_dir, tmp_path / "ov", 8.0, runtime="openvino", layer_precision=True)
