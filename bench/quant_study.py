"""Quantization by section: which weights share an exponent, and how many bits weights and activations need.

For one trained model (the best packed model of the frontier, ``docs/results.md``), every point
quantizes it with one choice of ``formats.weight_section`` (model, matrix, gate, gate_block,
row), weight bits (8, 6, 4) and activation bits (16, 12, 8), and scores the integer golden model
-- what the RTL computes, bit for bit -- on the whole test split, 64 streams, as the frontier's
``fixed_point_bpc`` does. Points go to a JSON file (merged by key, so the grid can be run in
parts) and one table in ``docs/quantization.md``.

    python bench/quant_study.py --model runs/cpcc-0.5/model.pt                # the whole grid
    python bench/quant_study.py --model ... --acts 16 --jobs 2                # a part of it
    python bench/quant_study.py --report                                      # table from the JSON

Activation formats keep three integer bits (Q3.(bits-4)) for the embedding, h and the gate
inputs; the cell state has 8 more bits; logits keep Q7.(bits-8) but at least 2 fraction bits;
the LUT index keeps up to 7 fraction bits. 16-bit activations and 8-bit weights were the
toolkit's defaults before this study, with gate_block sections (row since).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from ccflow.arrayconfig import WEIGHT_SECTIONS, NumberFormats  # noqa: E402

STREAMS = 64
KEEP = "<!-- written by hand from here on; bench/quant_study.py keeps it -->"


def formats(section: str, weight_bits: int, act_bits: int) -> NumberFormats:
    """The number formats of one point of the study (see the module docstring)."""
    act_frac = act_bits - 4
    return NumberFormats(weight_bits=weight_bits, act_bits=act_bits, act_frac=act_frac, acc_bits=32,
                         cell_bits=act_bits + 8, lut_frac=min(7, act_frac), logit_frac=max(act_bits - 8, 2),
                         weight_section=section)


def key(section: str, w: int, a: int) -> str:
    return f"{section}/w{w}/a{a}"


def measure(model_path: str, section: str, w: int, a: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from ccflow.checkpoint import load_model
    from ccflow.corpus import load_corpus
    from ccflow.golden import fixed_point_bpc
    from ccflow.pack import FloatModel
    from ccflow.quantize import quantize

    t0 = time.process_time()
    trained = load_model(model_path)
    cfg = trained.config
    test = load_corpus(cfg.data.corpus, vocab=trained.vocab).test
    array = replace(cfg.array, formats=formats(section, w, a))
    design = quantize(FloatModel.from_torch(trained.model), array, trained.packings)
    bpc = fixed_point_bpc(design, test, STREAMS)
    return dict(key=key(section, w, a), model=model_path, weight_section=section, weight_bits=w, act_bits=a,
                fixed_point_bpc=round(bpc, 5), quant_saturations=int(design.quant_saturations),
                cpu_s=round(time.process_time() - t0))


def report(points: list[dict], doc: Path) -> None:
    by = {p["key"]: p for p in points}
    combos = [(w, a) for a in (16, 12, 8) for w in (8, 6, 4)]
    combos = [c for c in combos if any(key(s, *c) in by for s in WEIGHT_SECTIONS)]
    models = sorted({p["model"] for p in points})
    cpu = sum(p["cpu_s"] for p in points)
    lines = ["# Quantization by section (`make quant-study`)", "",
             f"Fixed-point test BPC (integer golden model = the RTL, bit for bit; whole test split, {STREAMS} streams)",
             f"of {', '.join(f'`{Path(m).parent.name}`' for m in models)} (the frontier run of that name, "
             "docs/results.json), for each weight section and weight/activation width.",
             f"{len(points)} points, {cpu / 60:.0f} CPU minutes. Saturated weights/biases at quantization time in",
             "parentheses where there were any. Points are in [quant_study.json](quant_study.json).", "",
             "| weight section | " + " | ".join(f"w{w} a{a}" for w, a in combos) + " |",
             "|---|" + "---|" * len(combos)]
    for s in WEIGHT_SECTIONS:
        cells = []
        for c in combos:
            p = by.get(key(s, *c))
            cells.append("" if p is None else f"{p['fixed_point_bpc']:.4f}"
                         + (f" ({p['quant_saturations']})" if p["quant_saturations"] else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    kept = doc.read_text().split(KEEP, 1)[1] if doc.is_file() and KEEP in doc.read_text() else "\n"
    doc.write_text("\n".join(lines) + "\n" + KEEP + kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model.pt or checkpoint.pt of a trained (packed) model")
    ap.add_argument("--sections", default=",".join(WEIGHT_SECTIONS))
    ap.add_argument("--weights", default="8,6,4", help="weight bits")
    ap.add_argument("--acts", default="16,12,8", help="activation bits")
    ap.add_argument("--jobs", type=int, default=2, help="points measured at once, one thread each")
    ap.add_argument("--json", default=str(REPO / "docs" / "quant_study.json"), help="points, merged by key")
    ap.add_argument("--doc", default=str(REPO / "docs" / "quantization.md"))
    ap.add_argument("--report", action="store_true", help="only rewrite the table from --json")
    args = ap.parse_args()
    store = Path(args.json)

    def stored() -> dict:
        return {p["key"]: p for p in json.loads(store.read_text())} if store.is_file() else {}

    if not args.report:
        if not args.model or not Path(args.model).is_file():
            raise SystemExit(f"--model {args.model}: no such file; give a trained model.pt "
                             "(python bench/experiments.py trains the frontier's runs)")
        sections = args.sections.split(",")
        bad = sorted(set(sections) - set(WEIGHT_SECTIONS))
        if bad:
            raise SystemExit(f"--sections: unknown {bad}; known: {', '.join(WEIGHT_SECTIONS)}")
        grid = [(s, int(w), int(a)) for a in args.acts.split(",") for w in args.weights.split(",") for s in sections]
        os.environ["OMP_NUM_THREADS"] = "1"
        print(f"{len(grid)} points; command: {shlex.join(sys.argv)}", flush=True)
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(measure, args.model, *g) for g in grid]
            for f in futures:
                point = f.result()
                store.write_text(json.dumps(list((stored() | {point["key"]: point}).values()), indent=1) + "\n")
                print(json.dumps(point), flush=True)
    report(list(stored().values()), Path(args.doc))
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
