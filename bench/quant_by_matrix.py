"""Which matrix makes a coarse weight section collapse at low weight bits.

docs/quantization.md found that at 4-bit weights every section coarser than a row costs about one
BPC while per-row exponents cost 0.07. This study finds where: it quantizes one trained model with
per-row exponents everywhere (the default), then gives a coarse section (``--sections``) to all
matrices, to each matrix alone (the others keep per-row exponents), and to every LSTM matrix but
not the decoder, and scores the integer golden model (the RTL, bit for bit) on the start of the
test split. For every matrix it also prints the exponent the coarse section gets and the share of
its nonzero weights that round to zero there.

    python bench/quant_by_matrix.py --model runs/d0.25-cpcc-rb-0.5/model.pt --bits 4 --chars 8000

Prints a markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "bench"))

from ccflow import quantize as Q  # noqa: E402
from ccflow.arrayconfig import WEIGHT_SECTIONS  # noqa: E402
from quant_study import formats  # noqa: E402


@contextlib.contextmanager
def coarse_on(section: str, matrices: set[int], seen: dict):
    """Per-row exponents except ``matrices``, which get ``section``'s; ``seen`` receives the quantizer's
    matrices and both exponent choices for every matrix (``matrices``, ``row``, ``coarse``).

    Study only: a design has one ``formats.weight_section`` (the RTL, the HLS C++ and the golden
    model all read it), so mixing sections per matrix is done here by wrapping the quantizer's
    exponent function for the duration of one quantization, not by a setting users could pick.
    """
    per_row = Q.row_exponents

    def mixed(mats, biases, out_fracs, gates, array):
        rows = per_row(mats, biases, out_fracs, gates, array)
        coarse = per_row(mats, biases, out_fracs, gates,
                         replace(array, formats=replace(array.formats, weight_section=section)))
        seen.update(matrices=mats, row=rows, coarse=coarse)
        return [coarse[i] if i in matrices else r for i, r in enumerate(rows)]

    Q.row_exponents = mixed
    try:
        yield
    finally:
        Q.row_exponents = per_row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model.pt or checkpoint.pt of a trained (packed) model")
    ap.add_argument("--sections", default="matrix", help="coarse sections to try, comma-separated")
    ap.add_argument("--bits", type=int, default=4, help="weight bits (activations stay 16)")
    ap.add_argument("--chars", type=int, default=8000, help="test characters scored (0: all)")
    ap.add_argument("--streams", type=int, default=16)
    args = ap.parse_args()
    if not Path(args.model).is_file():
        raise SystemExit(f"--model {args.model}: no such file; give a trained model.pt")
    sections = args.sections.split(",")
    coarse_sections = [s for s in WEIGHT_SECTIONS if s != "row"]
    bad = [s for s in sections if s not in coarse_sections]
    if bad:
        raise SystemExit(f"--sections: {bad} are not coarse sections; pick from {', '.join(coarse_sections)}")

    import torch

    torch.set_num_threads(1)
    from ccflow.checkpoint import load_model
    from ccflow.corpus import load_corpus
    from ccflow.golden import fixed_point_bpc
    from ccflow.pack import FloatModel

    trained = load_model(args.model)
    cfg = trained.config
    test = load_corpus(cfg.data.corpus, vocab=trained.vocab).test
    test = test[:args.chars] if args.chars else test
    model = FloatModel.from_torch(trained.model)
    n_lstm = len(model.layers)
    names = [f"layer {i}" for i in range(n_lstm)] + ["decoder"]
    t0 = time.process_time()

    seen: dict = {}

    def score(section: str, matrices: set[int]) -> float:
        array = replace(cfg.array, formats=formats("row", args.bits, 16))
        with coarse_on(section, matrices, seen):
            design = Q.quantize(model, array, trained.packings)
        return fixed_point_bpc(design, test, args.streams)

    print(f"{args.model}: {len(test)} test chars, {args.streams} streams, w{args.bits} a16")
    print(f"\nper-row exponents everywhere: {score('row', set()):.4f} BPC\n")
    for section in sections:
        print(f"| {section} section on | BPC | exponents ({section}) | nonzero weights rounded to zero ({section} / row) |")
        print("|---|---|---|---|")
        print(f"| all matrices | {score(section, set(range(n_lstm + 1))):.4f} | | |")
        mats, coarse, fine = seen["matrices"], seen["coarse"], seen["row"]  # what that quantization used
        for i, name in enumerate(names):
            nz = mats[i] != 0

            def zeroed(e):  # as the quantizer rounds: round(w * 2**e) == 0
                return float(np.mean((np.rint(mats[i] * 2.0 ** e.astype(float)[:, None]) == 0)[nz]))

            print(f"| {name} alone | {score(section, {i}):.4f} | {' '.join(map(str, np.unique(coarse[i])))} | "
                  f"{zeroed(coarse[i]):.1%} / {zeroed(fine[i]):.1%} |")
        print(f"| every LSTM layer, decoder per row | {score(section, set(range(n_lstm))):.4f} | | |\n")
    print(f"{time.process_time() - t0:.0f} CPU s")


if __name__ == "__main__":
    main()
