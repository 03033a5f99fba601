"""``python -m ccflow <command>``: every stage of the flow from the command line.

The Makefile calls exactly these commands, so ``make`` and a hand-written sweep
go through the same code. Known failures (bad config, missing data, a
checkpoint from another configuration, a packing that does not fit the array)
print one line naming the fix and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _overrides(args) -> list[str]:
    sets = list(args.set or [])
    if getattr(args, "epochs", None) is not None:
        sets.append(f"train.epochs={args.epochs}")
    if getattr(args, "data", None):
        sets.append(f"data.corpus={json.dumps(args.data)}")
    return sets


def cmd_train(args) -> None:
    from .config import load_config
    from .train import run_training

    cfg = load_config(args.config, _overrides(args))
    out = Path(args.out or f"build/{cfg.name}/train")
    print(run_training(cfg, out, resume=args.resume, device=args.device, threads=args.threads))


def cmd_eval(args) -> None:
    from .checkpoint import read_checkpoint
    from .evaluate import evaluate_checkpoint

    if read_checkpoint(args.checkpoint)["config"].get("model", {}).get("arch", "lstm") != "lstm":
        from .cnn_train import evaluate_image_checkpoint

        bits, acc = evaluate_image_checkpoint(args.checkpoint, split=args.split, spec=args.data, device=args.device,
                                              threads=args.threads)
        print(f"{args.split} accuracy {acc:.2%}, cross-entropy {bits:.4f} bits per image")
        return
    bpc = evaluate_checkpoint(args.checkpoint, split=args.split, corpus_spec=args.data, device=args.device,
                              threads=args.threads)
    print(f"{args.split} BPC {bpc:.4f}")


def cmd_rtl(args) -> None:
    from .flow import build_rtl, summary

    build_rtl(args.checkpoint, args.out, overrides=args.set or [], streams=args.streams,
              stimulus_tokens=args.tokens, score=not args.no_score, threads=args.threads,
              stimulus_images=args.images)
    print(summary(args.out))


def cmd_sim(args) -> None:
    from .flow import simulate

    for sim in args.sim:
        r = simulate(args.rtl, sim=sim, tokens=args.tokens)
        if "images_checked" in r:
            print(f"{sim}: bit-exact on {r['images_checked']} images, {r['cycles_per_image']:.0f} cycles per image, "
                  f"latency {r['latency']:.0f} cycles")
            continue
        print(f"{sim}: bit-exact on {r['tokens_checked']} tokens, {_interval_text(r)}, "
              f"latency {r['cycles_per_token']:.0f} cycles")


def _interval_text(r: dict) -> str:
    """The measured token interval, or why there is none (too few stall-free tokens to fill the wavefront)."""
    if r.get("token_interval"):
        return f"{r['token_interval']:.1f} cycles per token"
    return (f"cycles per token not measured ({r.get('free_tokens', 0)} stall-free tokens; the layer wavefront "
            f"fills with one more than the matrices: simulate more tokens)")


def cmd_hls(args) -> None:
    from .flow import check_hls

    r = check_hls(args.rtl, tokens=args.tokens)
    if "images_checked" in r:
        print(f"HLS C simulation: bit-exact on {r['images_checked']} images")
        return
    print(f"HLS C simulation: bit-exact on {r['tokens_checked']} tokens")


def cmd_lint(args) -> None:
    from .flow import FlowError, require_rtl
    from .simulate import lint_verilator, parse_pyverilog, yosys_stat

    require_rtl(args.rtl)
    modules = parse_pyverilog(args.rtl)
    print(f"pyverilog: {len(modules)} files parsed ({sum(len(m) for m in modules.values())} modules)")
    lint = lint_verilator(args.rtl)
    if not lint.clean:
        print("\n".join(lint.warnings) or lint.output, file=sys.stderr)
        raise FlowError(f"verilator --lint-only -Wall found {len(lint.warnings) or 'some'} warning(s) in {args.rtl} "
                        "(listed above); regenerate it with `ccflow rtl` or fix the template")
    print("verilator --lint-only -Wall: clean")
    if not args.no_yosys:
        stat = yosys_stat(args.rtl)
        print(f"yosys: {stat['total_cells']:,} cells, {stat['macc']} multiply-accumulate, "
              f"{stat['ff_bits']:,} flip-flop bits, {stat['memories']} memories ({stat['rom_bits']['total']:,} ROM bits), "
              f"{stat['seconds']:.0f} s")


def cmd_summary(args) -> None:
    from .flow import summary

    print(summary(args.rtl))


def cmd_plots(args) -> None:
    from .plots import plot_training

    for p in plot_training([Path(p) for p in args.logs], Path(args.out)):
        print(p)


def cmd_prepare_enwik8(args) -> None:
    from .corpus import prepare_enwik8

    print(prepare_enwik8(args.zip, args.out))


def cmd_combine(args) -> None:
    from .checkpoint import load_model
    from .pack import PackError, float_model, pack_model, row_block

    trained = load_model(args.checkpoint)
    cfg = trained.config.replace(args.set or [])
    model, packings = float_model(trained.model), trained.packings
    if args.recombine:  # the final weights combined again with cfg's [combine] and array.alpha, no retraining
        before = pack_model(model, cfg.array, None).nnz
        model, packings = model.combined(cfg.array.alpha, cfg.combine.gamma, row_block(cfg))
        print(f"combined again: alpha {cfg.array.alpha}, gamma {cfg.combine.gamma:g}, "
              f"{'row blocks of ' + str(cfg.array.rows) if cfg.combine.row_split else 'whole matrices'}; "
              f"combine-pruning drops {before - pack_model(model, cfg.array, None).nnz:,} weights (not retrained)")
    try:
        packed = pack_model(model, cfg.array, packings)
    except PackError as e:
        raise PackError(f"{args.checkpoint}: {e}") from None
    per = ("per token (decoder included, the same count as `ccflow rtl`)" if cfg.model.arch == "lstm" else
           "once per image (each packed tile stays in the array while the image's positions stream through)")
    print(f"{cfg.array.rows} x {cfg.array.cols} MX cells, alpha {cfg.array.alpha}; packed cells = cells the array "
          f"executes {per}")
    print("\n".join(packed.lines()))


def cmd_fpga(args) -> None:
    from .fpga import DoesNotFit, FpgaError, format_report, read_report, run_ecp5, run_xilinx

    try:
        if args.no_ecp5 and not args.xilinx:
            raise FpgaError("--no-ecp5 without --xilinx leaves nothing to run")
        if not args.no_ecp5:
            run_ecp5(args.rtl, freq_mhz=args.freq, seed=args.seed, place=not args.synth_only, router=args.router,
                     placer_density=args.placer_density, timing_weight=args.placer_timing_weight,
                     crit_exp=args.placer_critexp, bram_outreg=not args.no_bram_outreg)
        if args.xilinx:
            run_xilinx(args.rtl)
    except FpgaError as e:  # one line naming the step and its log; a design too big prints its table first
        if isinstance(e, DoesNotFit):
            print(format_report(read_report(args.rtl)))
        print(f"ccflow fpga: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    report = read_report(args.rtl)
    print(format_report({"xilinx": report["xilinx"]} if args.no_ecp5 else report))
    print(f"written {Path(args.rtl) / 'fpga_report.json'}")
    if args.require_timing and not args.no_ecp5 and not args.synth_only and not report.get("timing_met"):
        print(f"ccflow fpga: error: timing not met: Fmax {report.get('fmax_mhz')} MHz < {args.freq:g} MHz "
              f"(critical path in {Path(args.rtl) / 'fpga' / 'nextpnr.log'})", file=sys.stderr)
        raise SystemExit(1)


THREADS_HELP = ("CPU threads (default: 1 for a small model, else the free cores; CCFLOW_THREADS or "
                "OMP_NUM_THREADS set in the environment also choose)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccflow", description="Column-combined LSTM language models, from "
                                "training to bit-exact hardware: train -> rtl -> sim.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a char-LM with pruning + column combining on a schedule")
    t.add_argument("--config", default="tiny", help="preset name in configs/ or a .toml path")
    t.add_argument("--out", help="output folder (default build/<config>/train)")
    t.add_argument("--epochs", type=int, help="override train.epochs")
    t.add_argument("--data", help="corpus: builtin, ptbc-small, a train/valid/test.txt folder or a text file")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    t.add_argument("--threads", type=int, help=THREADS_HELP)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any setting, e.g. model.nhid=256")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="bits per character of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--data", help="corpus to score (default: the one it was trained on)")
    e.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    e.add_argument("--threads", type=int, help=THREADS_HELP)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("rtl", help="quantize, pack, render Verilog + HLS C++ + ROMs, score fixed-point BPC")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--out", required=True, help="rtl output folder")
    r.add_argument("--tokens", type=int, default=64, help="held-out test tokens to store as simulation stimulus")
    r.add_argument("--images", type=int, default=8, help="a CNN's test images to store as simulation stimulus")
    r.add_argument("--streams", type=int, default=16, help="parallel streams for scoring BPC")
    r.add_argument("--no-score", action="store_true", help="skip the float/fixed BPC (CNN: accuracy) evaluation")
    r.add_argument("--threads", type=int, help=THREADS_HELP)
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override e.g. array.cols=16")
    r.set_defaults(func=cmd_rtl)

    s = sub.add_parser("sim", help="cocotb regression of the generated top against the golden model")
    s.add_argument("--rtl", required=True)
    s.add_argument("--sim", nargs="+", default=["icarus"], choices=["icarus", "verilator"])
    s.add_argument("--tokens", type=int, help="simulate only the first N stimulus tokens (CNN: images)")
    s.set_defaults(func=cmd_sim)

    h = sub.add_parser("hls", help="compile the HLS C++ with g++ and compare with the golden model")
    h.add_argument("--rtl", required=True)
    h.add_argument("--tokens", type=int)
    h.set_defaults(func=cmd_hls)

    li = sub.add_parser("lint", help="pyverilog parse, verilator --lint-only -Wall, yosys resource estimate")
    li.add_argument("--rtl", required=True)
    li.add_argument("--no-yosys", action="store_true", help="skip the (slower) yosys synthesis")
    li.set_defaults(func=cmd_lint)

    m = sub.add_parser("summary", help="print the figures of a built design")
    m.add_argument("--rtl", required=True)
    m.set_defaults(func=cmd_summary)

    c = sub.add_parser("combine", help="the packing of a checkpoint as the array executes it: packed cells per "
                       "matrix, the same counts as ccflow rtl")
    c.add_argument("checkpoint")
    c.add_argument("--recombine", action="store_true", help="combine the final weights again with the config's "
                   "[combine] gamma/row_split and array.alpha (after --set), without retraining")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override e.g. combine.gamma=0.5, combine.row_split=false, array.rows=16")
    c.set_defaults(func=cmd_combine)

    fp = sub.add_parser("fpga", help="ECP5 LFE5U-85F synthesis + place and route (yosys, nextpnr): resources, "
                        "Fmax, tokens/s; optional Xilinx 7-series estimate")
    fp.add_argument("--rtl", required=True)
    fp.add_argument("--freq", type=float, default=100.0, metavar="MHZ", help="target clock (default 100)")
    fp.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    fp.add_argument("--router", choices=("router1", "router2"), default="router1", help="nextpnr router (default router1)")
    fp.add_argument("--placer-density", type=float, default=None, metavar="F",
                    help="nextpnr HeAP maximum placement density in (0, 1]; lower spreads congested logic")
    fp.add_argument("--placer-timing-weight", type=int, default=None, metavar="N",
                    help="nextpnr HeAP timing weight (its default 10); larger pulls critical arcs shorter")
    fp.add_argument("--placer-critexp", type=int, default=None, metavar="N",
                    help="nextpnr HeAP criticality exponent (its default 2)")
    fp.add_argument("--no-bram-outreg", action="store_true", help="keep the registers the RTL marks for a block RAM's "
                    "output register (ccflow_bram_outreg) in the fabric, as yosys maps them (for comparison)")
    fp.add_argument("--xilinx", action="store_true", help="also a yosys synth_xilinx estimate for an XC7VX485T")
    fp.add_argument("--no-ecp5", action="store_true", help="skip the ECP5 run (with --xilinx)")
    fp.add_argument("--require-timing", action="store_true", help="exit 1 when the clock target is not met")
    fp.add_argument("--synth-only", action="store_true", help="stop after yosys synth_ecp5: resources, no Fmax")
    fp.set_defaults(func=cmd_fpga)

    pl = sub.add_parser("plots", help="PNG curves from training logs")
    pl.add_argument("logs", nargs="+", help="log.csv files")
    pl.add_argument("--out", required=True)
    pl.set_defaults(func=cmd_plots)

    pe = sub.add_parser("prepare-enwik8", help="split enwik8.zip 90M/5M/5M into train/valid/test.txt")
    pe.add_argument("zip")
    pe.add_argument("out")
    pe.set_defaults(func=cmd_prepare_enwik8)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .train import TrainingInterrupted

    try:
        args.func(args)
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: the state is saved, the message says --resume
        print(f"ccflow {args.command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"ccflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code, message = _refusal(e)
        if code == 1 and os.environ.get("CCFLOW_TRACEBACK"):
            raise
        print(f"ccflow {args.command}: {message}", file=sys.stderr)
        return code
    return 0


def _refusal(e: Exception) -> tuple[int, str]:
    """(exit status, one-line message) for an error that ended a command."""
    if isinstance(e, FloatingPointError):  # training diverged; the message names the lr
        return 3, f"error: {e}"
    if _ours(e):  # ccflow's own errors name what is wrong and the fix
        return 2, f"error: {_one_line(e)}"
    if isinstance(e, OSError):  # a file or folder the system refused: name it
        where = f" {e.filename}:" if e.filename else ""
        return 2, f"error:{where} {e.strerror or _one_line(e)}; check the path and its permissions"
    return 1, (f"internal error: {type(e).__name__}: {_one_line(e)} (a bug in ccflow; rerun with "
               "CCFLOW_TRACEBACK=1 and report the traceback)")


def _ours(e: BaseException) -> bool:
    """ccflow's own errors (ConfigError, CheckpointError, FlowError, ...): their messages name the fix."""
    return any(c.__module__.startswith("ccflow.") for c in type(e).__mro__)


def _one_line(e: BaseException) -> str:
    """The first line of an error message (a tool's log tail, if any, stays in the log it names)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
