"""Correctness rows of gpu_check.sh: every registered method with AMP off and on, plus fp16 and torch.compile rows.

Each row is one short `edgekd distill` run on the data, batch size, epochs and device of ``--config``, run in
this process through the ``run_training`` the CLI calls: a process per row would spend much of the GPU check
importing torch. A row passes when its run finishes with finite losses; an AMP or compiled row also needs its
held-out accuracy within noise of the same method's FP32 eager run of the same seed: within ``--acc-tol``, or
twice the gap between that run and an FP32 run of another seed, whichever is larger (a short run's accuracy
moves with the seed, and SLD's may collapse on some seeds; AMP changes the numerics, so it counts as another
draw). A failed row is recorded and the next one runs. Rows are appended to ``--rows`` as TSV (name,
PASS/FAIL, seconds, detail) for gpu_check.sh's summary. Exit code 3 if any row failed (not 1, which Python gives
an error that stopped the rows).

    python benchmarks/gpu_correctness.py --config data.yaml --teacher RUN_DIR --out DIR --rows rows.tsv
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
import traceback
from pathlib import Path

import edgekd.data
from edgekd.config import load_config
from edgekd.methods import list_methods, method_class
from edgekd.train import run_training


def build_data_once(build):
    """``build_data`` that makes each dataset once: every row reads the same synthetic images, and generating
    them again would cost seconds a row."""
    made = {}

    def build_once(spec, *, image_size=None, options=None):
        key = (spec, image_size, json.dumps(options or {}, sort_keys=True))
        if key not in made:
            made[key] = build(spec, image_size=image_size, options=options)
        return made[key]

    return build_once


def run_row(args, method: str, amp: str, compile_: bool, seed: int) -> dict:
    """One distillation run: its summary and the losses of every epoch."""
    cls = method_class(method)
    # a teacher only where the method needs one it does not train itself (tfkd-self trains its own CE copy)
    teacher = args.teacher if cls.needs_teacher and not cls.wants_self_teacher({}) else None
    out = args.out / f"{method}-amp_{amp}{'-compile' if compile_ else ''}-s{seed}"
    cfg = load_config(args.config, {"method": method, "model": args.student, "teacher": teacher, "amp": amp,
                                    "compile": compile_, "seed": seed, "out": str(out)})
    summary = run_training(cfg, show_progress=False)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {**summary, "losses": [v for row in history for v in row["losses"].values()],
            "last_losses": history[-1]["losses"]}


def check_row(args, method: str, amp: str, compile_: bool, seed: int,
              fp32_acc: dict[tuple[str, int], float]) -> tuple[bool, str]:
    r = run_row(args, method, amp, compile_, seed)
    ok = all(math.isfinite(v) for v in r["losses"])
    losses = " ".join(f"{k} {v:.3f}" for k, v in r["last_losses"].items())
    detail = f"acc {r['final_acc']:.3f}, {r['images_per_s']:.0f} img/s, last epoch's losses: {losses}"
    if not ok:
        detail += "; NON-FINITE loss"
    if amp == "off" and not compile_:
        fp32_acc[method, seed] = r["final_acc"]
        return ok, detail
    if (method, 0) not in fp32_acc or (method, 1) not in fp32_acc:
        return False, detail + "; no FP32 eager runs to compare with"
    delta = r["final_acc"] - fp32_acc[method, 0]
    tol = max(args.acc_tol, 2 * abs(fp32_acc[method, 1] - fp32_acc[method, 0]))
    close = abs(delta) <= tol
    return ok and close, detail + f"; vs FP32 eager {delta:+.3f} ({'within' if close else 'OUTSIDE'} {tol:.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="YAML recipe: data, data_options, epochs, device, ...")
    p.add_argument("--teacher", required=True, help="run dir of the teacher of the methods that need one")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--methods", default="all", help="comma-separated, or 'all': the method registry's")
    p.add_argument("--amp", default="auto", help="AMP of the 'AMP on' rows (auto: bf16, or fp16 where no bf16)")
    p.add_argument("--extra-amp", default="fp16", help="another AMP setting, for --extra-amp-methods")
    p.add_argument("--extra-amp-methods", default="kd,r2kd")
    p.add_argument("--compile-methods", default="kd", help="methods also run with --compile (and --amp)")
    p.add_argument("--acc-tol", type=float, default=0.06,
                   help="|acc - FP32 acc| an AMP/compiled row may have at least (more where seeds differ more)")
    p.add_argument("--out", type=Path, required=True, help="folder for the rows' run dirs")
    p.add_argument("--rows", type=Path, required=True, help="TSV file the rows are appended to")
    args = p.parse_args()
    edgekd.data.build_data = build_data_once(edgekd.data.build_data)  # build_parts imports it from edgekd.data per run
    methods = list_methods() if args.methods == "all" else args.methods.split(",")
    plan = [(m, "off", False, seed) for seed in (0, 1) for m in methods]  # FP32 eager, and its seed noise
    plan += [(m, args.amp, False, 0) for m in methods]
    plan += [(m, args.extra_amp, False, 0) for m in args.extra_amp_methods.split(",") if m and args.extra_amp]
    plan += [(m, args.amp, True, 0) for m in args.compile_methods.split(",") if m]
    fp32_acc: dict[tuple[str, int], float] = {}
    failed = 0
    for method, amp, compile_, seed in plan:
        name = f"distill {method} amp={amp}{' compile' if compile_ else ''}{f' seed={seed}' if seed else ''}"
        start = time.perf_counter()
        try:
            ok, detail = check_row(args, method, amp, compile_, seed, fp32_acc)
        except Exception as e:  # a broken row is a result, not the end of the check
            traceback.print_exc()
            ok, detail = False, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        seconds = time.perf_counter() - start
        gc.collect()  # the finished run's loader workers and GPU memory go now, not rows later
        failed += not ok
        status = "PASS" if ok else "FAIL"
        print(f"{status} {name} ({seconds:.1f} s): {detail}", flush=True)
        with args.rows.open("a") as f:
            f.write("\t".join([name, status, f"{seconds:.0f}", detail.replace("\t", " ")[:300]]) + "\n")
    raise SystemExit(3 if failed else 0)


if __name__ == "__main__":
    main()
