"""cocotb bench of ccflow_top against the golden model, bit for bit, over a stream of tokens.

Checked, for every token: its logits (when m_axis_tvalid rises, and unchanged while it is held),
every row block's accumulators on the trace port (each token's in block order; the tokens in flight
interleave), and sat_count_o against the
golden model's saturation total. The first ``free_tokens`` run without stalls and give the cycle
figures; then (``stalls``) s_axis_tvalid and m_axis_tready drop for random stretches, short and long;
with ``reset`` one token is interrupted by a reset mid-way, the golden model is reset too and the
stream continues from that token, so every token is checked. The first mismatch stops the run with token index, block/row, expected and got.

Inputs are driven and outputs sampled at the falling clock edge: what is sampled there is the
state after the preceding rising edge, and what is driven is seen by the next one.
"""

from __future__ import annotations

import random
from collections import deque

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from bench_common import bench_args, load_design, unpack, write_results
from ccflow.generate import bits_for
from ccflow.golden import GoldenModel
from ccflow.schedule import steady_interval


class Token:
    """One accepted token and what the golden model says it must produce."""

    def __init__(self, index, token, logits, trace, sat, accept_cycle):
        self.index = index
        self.token = token
        self.logits = logits
        self.trace = trace
        self.sat = sat
        self.accept_cycle = accept_cycle
        self.traces_seen = 0
        self.out_cycle = None
        self.out_word = None


class TopBench:
    def __init__(self, dut, design, args):
        self.dut = dut
        self.design = design
        self.args = args
        fmt = design.array.formats
        self.rows, self.acc_bits, self.act_bits = design.array.rows, fmt.acc_bits, fmt.act_bits
        self.vocab, self.n_blocks = design.vocab_size, design.n_blocks
        self.tok_bits = bits_for(design.vocab_size)
        self.tokens = [int(t) for t in args["tokens"]]
        self.stalls = bool(args.get("stalls", True))
        self.free = min(len(self.tokens), int(args.get("free_tokens", len(self.tokens))))
        self.do_reset = bool(args.get("reset", False))
        self.rng = random.Random(int(args.get("seed", 1)))
        self.golden = GoldenModel(design, trace=True)
        self.cycle = 0
        self.checked = []  # verified tokens
        self.dropped = []  # token indices lost to the reset
        self.sat_seen = 0
        self.message = ""
        self.passed = False
        self.resets = 0
        self.reset_mid_token = False
        self.tok_stall_cycles = 0
        self.out_stall_cycles = 0

    # --- checks ----------------------------------------------------------------

    def read(self, handle, what: str, signed: bool = False) -> int:
        """A port's value as an integer; X or Z bits are a failure, not an exception."""
        value = handle.value
        if not value.is_resolvable:
            self.fail(f"cycle {self.cycle}: {what} has X/Z bits ({value})"[:400])
        return value.to_signed() if signed else int(value)

    def fail(self, msg: str):
        self.message = msg
        raise AssertionError(msg)

    def _where(self, block: int, row: int) -> str:
        for m in self.design.matrices:
            if m.block_start <= block < m.block_start + m.n_blocks:
                return f"block {block} ({m.name} rows {(block - m.block_start) * self.rows}.., row {row})"
        return f"block {block} row {row}"

    def check_trace(self, inflight):
        """A finished row block: the oldest token in flight that expects this block next.

        Several tokens are in flight (one per layer, ccflow_controller), so their blocks interleave,
        but each token's blocks come in block order and each matrix's tokens in token order."""
        got_block = self.read(self.dut.trace_block_o, "trace_block_o")
        waiting = [r for r in inflight if r.traces_seen < self.n_blocks]
        if not waiting:
            self.fail(f"cycle {self.cycle}: trace pulse with no token in flight")
        rec = next((r for r in waiting if r.traces_seen == got_block), None)
        if rec is None:
            expected = ", ".join(f"token {r.index}: block {r.traces_seen}" for r in waiting)
            self.fail(f"cycle {self.cycle}: trace pulse for block {got_block}, expected one of {expected}")
        b = rec.traces_seen
        got = unpack(self.read(self.dut.trace_acc_o, f"token {rec.index}: trace_acc_o"), self.rows, self.acc_bits)
        exp = rec.trace[b]
        bad = np.flatnonzero(got != exp)
        if bad.size:
            r = int(bad[0])
            self.fail(f"token {rec.index} (id {rec.token}): accumulator of {self._where(b, r)}: "
                      f"expected {int(exp[r])}, got {int(got[r])} ({bad.size} rows differ)")
        rec.traces_seen += 1

    def check_out(self, inflight):
        if not inflight:
            self.fail(f"cycle {self.cycle}: m_axis_tvalid with no token in flight")
        rec = inflight[0]
        word = self.read(self.dut.m_axis_tdata, f"token {rec.index}: m_axis_tdata")
        if rec.out_cycle is not None:  # held: must not change
            if word != rec.out_word:
                self.fail(f"token {rec.index}: logits changed while m_axis_tvalid was held (cycle {self.cycle})")
            return
        if rec.traces_seen != self.n_blocks:
            self.fail(f"token {rec.index}: m_axis_tvalid after {rec.traces_seen} of {self.n_blocks} row blocks")
        got = unpack(word, self.vocab, self.act_bits)
        bad = np.flatnonzero(got != rec.logits)
        if bad.size:
            v = int(bad[0])
            self.fail(f"token {rec.index} (id {rec.token}): logit {v}: expected {int(rec.logits[v])}, "
                      f"got {int(got[v])} ({bad.size} of {self.vocab} logits differ)")
        sat = self.read(self.dut.sat_count_o, f"token {rec.index}: sat_count_o")
        if sat != rec.sat:
            self.fail(f"token {rec.index} (id {rec.token}): sat_count_o {sat}, golden model {rec.sat}")
        self.sat_seen = sat
        rec.out_cycle = self.cycle
        rec.out_word = word
        self.checked.append(rec)

    # --- the run ---------------------------------------------------------------

    def _gap(self, long_max: int) -> int:
        r = self.rng.random()
        if r < 0.5:
            return 0
        if r < 0.85:
            return self.rng.randint(1, 4)
        return self.rng.randint(5, max(5, long_max))

    async def run(self):
        dut, rng = self.dut, self.rng
        Clock(dut.clk_i, 10, unit="ns").start()
        dut.rst_ni.value = 0
        dut.s_axis_tvalid.value = 0
        dut.s_axis_tdata.value = 0
        dut.m_axis_tready.value = 0
        for _ in range(3):
            await FallingEdge(dut.clk_i)
        dut.rst_ni.value = 1

        n = len(self.tokens)
        inflight: deque[Token] = deque()
        next_tok = 0
        presenting = False
        tok_gap = 0
        ready_gap = 0
        reset_index = self.free + (n - self.free) // 2 if self.do_reset and n - self.free >= 2 else None
        reset_cycle = None
        limit = 40 * (self.design.n_tiles + 8 * len(self.design.matrices) + 64)
        progress = 0
        while next_tok < n or inflight:
            await FallingEdge(dut.clk_i)
            self.cycle += 1
            if self.cycle - progress > limit:
                self.fail(f"no progress for {limit} cycles at cycle {self.cycle} (token {next_tok}, "
                          f"{len(inflight)} in flight)")

            if reset_cycle is not None and self.cycle >= reset_cycle:
                # the next token may already be accepted (its embedding loads during the decoder)
                victim = next((r for r in inflight if r.index == reset_index), None)
                self.reset_mid_token = victim is not None and victim.out_cycle is None
                if not self.reset_mid_token:
                    self.fail(f"the reset at cycle {self.cycle} did not hit token {reset_index} mid-way")
                dut.rst_ni.value = 0
                dut.s_axis_tvalid.value = 0
                dut.m_axis_tready.value = 0
                for _ in range(2):
                    await FallingEdge(dut.clk_i)
                    self.cycle += 1
                dut.rst_ni.value = 1
                if (self.read(dut.sat_count_o, "sat_count_o") != 0 or self.read(dut.m_axis_tvalid, "m_axis_tvalid")
                        or not self.read(dut.s_axis_tready, "s_axis_tready")):
                    self.fail("after reset: sat_count_o, m_axis_tvalid or s_axis_tready not in the reset state")
                lost = [r.index for r in inflight if r.out_cycle is None]
                self.dropped += lost
                next_tok = min(lost)  # the stream resumes with the interrupted token, from a zero state
                inflight.clear()
                self.golden.reset()
                self.resets += 1
                reset_cycle = None
                presenting = False
                progress = self.cycle
                continue

            # sample: the state after the last rising edge
            if self.read(dut.trace_valid_o, "trace_valid_o"):
                self.check_trace(inflight)
                progress = self.cycle
            out_valid = self.read(dut.m_axis_tvalid, "m_axis_tvalid")
            if out_valid:
                self.check_out(inflight)
            tok_ready = self.read(dut.s_axis_tready, "s_axis_tready")

            # drive: seen by the next rising edge
            if not presenting and next_tok < n:
                if tok_gap > 0:
                    tok_gap -= 1
                    self.tok_stall_cycles += 1
                else:
                    presenting = True
            dut.s_axis_tvalid.value = int(presenting)
            dut.s_axis_tdata.value = self.tokens[next_tok] if presenting else rng.randrange(1 << self.tok_bits)

            pending = inflight[0] if inflight and inflight[0].out_cycle is not None else None
            out_ready = 1
            if self.stalls and (pending is None or pending.index >= self.free):
                if ready_gap > 0:
                    ready_gap -= 1
                    out_ready = 0
                elif rng.random() < 0.2:
                    ready_gap = self._gap(2 * self.design.n_tiles)
                    out_ready = 0 if ready_gap else 1
            if pending is not None and not out_ready:
                self.out_stall_cycles += 1
            dut.m_axis_tready.value = out_ready

            # handshakes at the coming edge
            if out_valid and out_ready:
                inflight.popleft()
                progress = self.cycle
            if presenting and tok_ready:
                tok = self.tokens[next_tok]
                logits = self.golden.step([tok])[0].copy()
                trace = [t[0].copy() for t in self.golden.trace]
                inflight.append(Token(next_tok, tok, logits, trace, self.golden.sat.total, self.cycle))
                if next_tok == reset_index and self.resets == 0:
                    lat = self.cycles_per_token() or 2 * self.design.n_tiles
                    reset_cycle = self.cycle + rng.randint(4, max(4, int(lat) - 4))
                next_tok += 1
                presenting = False
                progress = self.cycle
                if self.stalls and next_tok >= self.free:
                    tok_gap = self._gap(self.design.n_tiles)
        if self.do_reset and self.resets == 0 and reset_index is not None:
            self.fail("the planned mid-run reset never happened")
        self.passed = True

    # --- figures ---------------------------------------------------------------

    def cycles_per_token(self) -> float:
        lat = [r.out_cycle - r.accept_cycle for r in self.checked if r.index < self.free]
        return float(np.mean(lat)) if lat else 0.0

    def token_interval(self) -> float:
        """Mean cycles between accepts of the stall-free tokens once the layer wavefront is full
        (ccflow.schedule.steady_interval: the first tokens run with stages still empty)."""
        acc = sorted(r.accept_cycle for r in self.checked if r.index < self.free)
        return float(steady_interval(acc, len(self.design.matrices)))

    def results(self) -> dict:
        return {
            "passed": self.passed and not self.message, "message": self.message,
            "tokens": len(self.tokens), "tokens_checked": len(self.checked), "tokens_dropped_by_reset": self.dropped,
            "cycles_per_token": self.cycles_per_token(), "token_interval": self.token_interval(),
            "free_tokens": self.free, "ideal_cycles": self.design.ideal_cycles, "tiles": self.design.n_tiles,
            "sat_count": self.sat_seen, "resets": self.resets, "reset_mid_token": self.reset_mid_token,
            "tok_stall_cycles": self.tok_stall_cycles, "out_stall_cycles": self.out_stall_cycles,
            "cycles": self.cycle,
        }


@cocotb.test()
async def top_matches_golden(dut):
    args = bench_args()
    bench = TopBench(dut, load_design(), args)
    try:
        await bench.run()
    finally:
        write_results(args, bench.results())
