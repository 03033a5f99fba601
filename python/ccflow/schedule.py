"""The generated top's tile schedule, cycle by cycle: what `token_interval` reports.

The controller (rtl_templates/ccflow_controller.v.j2) runs the layers as a wavefront: a *step*
issues every matrix once, matrix m for token t - m, and waits only where what a matrix reads is
not written yet. How long a step takes therefore depends on the tile counts, the pipeline depth
and the embedding loader, so rather than a formula this module replays the controller, the
embedding loader and the pointwise unit's write timing register by register, with a token always
offered and the logits always taken, as the test bench's stall-free tokens are. The benches assert
that the hardware's interval equals this one (tests/test_sim.py).

Latencies, from the tile issued in cycle 0 (docs/hardware.md): a block's accumulators are final in
cycle S (``acc_stage`` of the render context), its gate inputs reach the pointwise unit in S + 3,
which writes h in its stage P``h_stage`` (S + 3 + h_stage = S + 19), one phase of rows/4 / phases
units per cycle for ``pw_phases`` cycles (``commit`` with a layer's last block's last phase, a matrix
that waits for it issues a cycle later), and holds the embedding loader's bank writes off two
cycles ahead of each; the decoder's logits are presented in S + 8.
"""

from __future__ import annotations

from dataclasses import dataclass

from .design import Design


@dataclass(frozen=True)
class Timing:
    acc_stage: int  # S
    h_stage: int    # the pointwise stage that writes h (of a block's first phase)
    emb_words: int
    pw_phases: int = 1  # cycles the pointwise unit spends on a block, one h write each

    @property
    def commit(self) -> int:  # last tile of a layer issued -> its last h written (the last phase)
        return self.acc_stage + 3 + self.h_stage + self.pw_phases - 1

    @property
    def write_soon(self) -> int:  # last tile of an LSTM block issued -> the loader may not read
        return self.acc_stage + 3 + self.h_stage - 2  # ... for pw_phases cycles from here

    @property
    def logits(self) -> int:  # last decoder tile issued -> m_axis_tvalid
        return self.acc_stage + 8


def accept_cycles(design: Design, timing: Timing, tokens: int) -> list[int]:
    """The cycles in which the top accepts each of ``tokens`` tokens, offered back to back."""
    mats = design.matrices
    n_mats = len(mats)
    decoder = n_mats - 1
    last = [m.tile_start + m.n_tiles - 1 for m in mats]
    block_ends = set(int(t) for t in range(design.n_tiles) if design.tile_last[t] and
                     mats[_matrix_of(design, t)].kind == "lstm")

    commits: dict[int, list[tuple]] = {}  # cycle -> (layer, copy) whose last h is written then
    busy_writes: set[int] = set()       # cycles in which the pointwise unit holds the loader off
    logits_at: list[int] = []           # cycles in which logits are presented (taken at once)

    # controller registers
    state, tile, mat = "idle", 0, 0
    full = [False] * n_mats
    pend: set[tuple] = set()  # (layer, copy) issued, last h not yet written
    tags = [0] * n_mats
    next_tag = 0
    out_pend = False
    # loader registers
    loading = loaded = taken = False
    we_q = we_q2 = False
    word = 0
    wr_word_q = wr_word_q2 = 0
    accepted: list[int] = []

    cycle = 0
    limit = 50 * (design.n_tiles + 64) * (tokens + n_mats + 2)
    while len(accepted) < tokens:
        cycle += 1
        if cycle > limit:
            raise RuntimeError("schedule model made no progress")
        committed = set(commits.pop(cycle, []))
        pend_now = pend - committed
        handshake = cycle in logits_at
        out_free = not out_pend
        allow = cycle not in busy_writes
        emb_busy = loading or we_q or we_q2

        # ---- controller (combinational)
        issue = take = new_step = False
        state_d, tile_d, mat_d, full_d, pend_d = state, tile, mat, list(full), set(pend_now)
        tags_d, next_tag_d = list(tags), next_tag
        parity = tags[mat] & 1
        out_pend_d = out_pend and not handshake
        if state == "idle":
            new_step = True
        elif state == "next":
            if not full[mat]:
                if mat == decoder:
                    new_step = True
                else:
                    tile_d, mat_d = last[mat] + 1, mat + 1
            else:
                below = mat > 0 and (mat - 1, parity) in pend  # registered state: a commit counts a cycle later
                issue = (not below and out_free) if mat == decoder else \
                    (not below and (mat, 1 - parity) not in pend)
        else:
            issue = True
        if issue:
            if tile in block_ends:
                busy_writes.update(cycle + timing.write_soon + k for k in range(timing.pw_phases))
            if tile != last[mat]:
                tile_d, state_d = tile + 1, "run"
            elif mat == decoder:
                out_pend_d = True
                logits_at.append(cycle + timing.logits)
                new_step = True
            else:
                pend_d.add((mat, parity))
                commits.setdefault(cycle + timing.commit, []).append((mat, parity))
                tile_d, mat_d, state_d = tile + 1, mat + 1, "next"
        if new_step:
            tile_d, mat_d = 0, 0
            go = loaded or (not emb_busy and any(full[:-1]))
            state_d = "next" if go else "idle"
            if go:
                take = loaded
                full_d = [loaded] + full[:-1]
                tags_d = [next_tag] + tags[:-1]
                next_tag_d = next_tag + 1 if loaded else next_tag

        # ---- loader (combinational, then registers)
        tok_ready = not loading and not we_q and not we_q2 and not loaded and not taken
        if tok_ready:
            accepted.append(cycle)
        loaded_d = loaded
        if we_q2 and wr_word_q2 == timing.emb_words - 1:
            loaded_d = True
        elif take:
            loaded_d = False
        we_d = loading and allow
        loading_d, word_d = loading, word
        if tok_ready:
            loading_d, word_d = True, 0
        elif loading and allow:
            word_d = word + 1
            if word == timing.emb_words - 1:
                loading_d = False
        wr_word_q2, wr_word_q = wr_word_q, word
        we_q2, we_q = we_q, we_d
        loading, word, loaded, taken = loading_d, word_d, loaded_d, take

        # ---- controller registers
        state, tile, mat, full, pend, out_pend = state_d, tile_d, mat_d, full_d, pend_d, out_pend_d
        tags, next_tag = tags_d, next_tag_d
    return accepted


def _matrix_of(design: Design, tile: int) -> int:
    return next(k for k, m in enumerate(design.matrices) if m.tile_start <= tile < m.tile_start + m.n_tiles)


def steady_interval(accepts: list[int], n_mats: int) -> float:
    """Mean cycles between accepts once the wavefront is full (the first n_mats + 1 tokens fill it);
    0.0 (not measured) with too few tokens: the filling steps run fewer matrices and are faster."""
    acc = accepts[n_mats + 1:]
    return (acc[-1] - acc[0]) / (len(acc) - 1) if len(acc) > 1 else 0.0
