"""Column combining: pack the sparse columns of a weight matrix into few array columns.

A column group is a set of at most ``alpha`` columns that share one physical
array column (an MX cell per row picks which input it multiplies). A group may
have at most ``floor(gamma * rows)`` conflicts (rows where more than one of its
columns is nonzero, counted as nonzeros - 1); combine-pruning then keeps the
largest weight of each row of each group. See docs/combining.md.

The heuristic: sequential filling, every block at once
-----------------------------------------------------
Open a group with the densest column not yet placed, then repeatedly add the
feasible column (group stays within ``alpha`` columns and the conflict budget)
that covers the most rows the group does not cover yet, ties to the lowest
column index; close the group when nothing fits and open the next. Then a
repair sweep tries to empty the 32 smallest groups of each block by moving
their columns into other groups that still have room; a group that empties is
dropped. Blocks with at most 32 nonzero columns also run the greedy merge below
(about a millisecond there) and keep whichever needs fewer groups, so on
small blocks we never need more groups than it does; on larger ones we needed
one more in 2 of 6,000 random matrices and fewer on every benchmark matrix
(docs/combining.md).

The bank rule (optional, ``banks=``): the hardware reads input slot k of an array column from
memory bank k, so a group may hold at most one column per bank. Filling then treats a column
whose bank the open group already holds as infeasible (a per-block bitmask of the open group's
banks), the repair moves a column only into a group without its bank (per-group bank masks),
and the greedy merge merges only groups with disjoint banks. :func:`split_banks` splits the
groups of a packing made without the rule instead (lossless, more groups).

Why this rule: a group's conflicts are ``nonzeros - rows covered``, so a group
packs the most weights within its budget when its columns cover complementary
rows; "most new rows covered" is exactly that marginal gain (it is the choice
the public ASPLOS'19 code makes too, via "fewest empty rows after the merge").
Starting each group from the densest remaining column places the hard columns
while there is still a choice of partners, the way first-fit-decreasing does
for bin packing. The well-known alternative, merging the pair of groups with
the fewest resulting conflicts until none is feasible, builds pairs, then
quads, and stalls when two quads no longer fit together: on random 80%-sparse
matrices (alpha 8, gamma 0.5) it ends near n/4 groups where filling reaches
n/6. It is kept here as :func:`greedy_combine_reference` for comparison.

Why it is fast: each block's columns are bit-packed over its rows into
unsigned words, so the conflicts every candidate column would add to the open
group of every block come out of one vectorised AND + ``np.bitwise_count``.
Blocks (row split) advance in lockstep, so a matrix cut into 250 blocks costs
about as many numpy calls as an uncut one; placed columns are compacted away as
they go, and the hot loop writes into preallocated buffers.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

__all__ = [
    "Packing", "combine_columns", "conflicts", "check_packing", "split_banks", "greedy_combine_reference",
    "lstm_matrix", "lstm_unmatrix", "linear_matrix", "conv2d_matrix", "conv2d_unmatrix",
]

Groups = tuple[tuple[int, ...], ...]


@dataclass(frozen=True, eq=False)
class Packing:
    """Where every nonzero column of every row block went, and which weights survive.

    ``mask`` is the combine-pruning mask (True = nonzero and kept); training
    multiplies the weights by it after every optimizer step, and the RTL
    generator lays out exactly the True cells.
    """

    shape: tuple[int, int]
    alpha: int
    gamma: float
    row_block: int | None
    blocks: tuple[tuple[int, int, Groups], ...]
    mask: np.ndarray

    def __post_init__(self) -> None:
        mask = np.array(self.mask, dtype=bool)  # own, read-only copy: a frozen packing stays frozen
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if mask.shape != self.shape:
            raise ValueError(f"Packing.mask has shape {mask.shape}, expected shape {self.shape}")

    @property
    def packed_cells(self) -> int:
        return sum((stop - start) * len(groups) for start, stop, groups in self.blocks)

    @property
    def nnz(self) -> int:
        return int(self.mask.sum())

    @property
    def utilization(self) -> float:
        cells = self.packed_cells
        return self.nnz / cells if cells else 0.0

    @property
    def groups_total(self) -> int:
        return sum(len(groups) for _, _, groups in self.blocks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packing):
            return NotImplemented
        return (self.shape, self.alpha, self.gamma, self.row_block, self.blocks) == (
            other.shape, other.alpha, other.gamma, other.row_block, other.blocks
        ) and np.array_equal(self.mask, other.mask)

    __hash__ = None  # mutable-looking ndarray inside; compare, don't hash

    def to_dict(self) -> dict:
        """Plain ints/floats/lists/str only, so json and ``torch.load(weights_only=True)`` accept it.

        The mask is bit-packed row-major (numpy ``packbits``, big bit order) and base64-encoded:
        a 7360x3680 mask is 4.5 MB of text instead of 27 M list entries.
        """
        return {
            "format": "ccflow.packing/1",
            "shape": list(self.shape),
            "alpha": int(self.alpha),
            "gamma": float(self.gamma),
            "row_block": None if self.row_block is None else int(self.row_block),
            "blocks": [[int(a), int(b), [list(g) for g in groups]] for a, b, groups in self.blocks],
            "mask_packbits": base64.b64encode(np.packbits(self.mask, axis=None).tobytes()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Packing":
        if d.get("format") != "ccflow.packing/1":
            raise ValueError(f"packing format {d.get('format')!r} is not 'ccflow.packing/1'; "
                             "re-run combine_columns")
        shape = (int(d["shape"][0]), int(d["shape"][1]))
        bits = np.frombuffer(base64.b64decode(d["mask_packbits"]), dtype=np.uint8)
        mask = np.unpackbits(bits, count=shape[0] * shape[1]).astype(bool).reshape(shape)
        blocks = tuple(
            (int(a), int(b), tuple(tuple(int(c) for c in g) for g in groups)) for a, b, groups in d["blocks"]
        )
        rb = d["row_block"]
        return cls(shape, int(d["alpha"]), float(d["gamma"]), None if rb is None else int(rb), blocks, mask)


# ---------------------------------------------------------------- argument checks


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device, any dtype
        t = x.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return t.float().numpy()
    return np.asarray(x)


def _as_matrix(weight, name: str = "weight") -> np.ndarray:
    w = _to_numpy(weight)
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows = outputs, cols = inputs), got shape {w.shape}; "
                         "use lstm_matrix/linear_matrix/conv2d_matrix to flatten a layer")
    if w.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric matrix, got dtype {w.dtype}")
    if w.dtype.kind == "f" and not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf; fix the training run (or zero them) before combining")
    return w


def _check_params(alpha, gamma, row_block) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, Integral) or alpha < 1:
        raise ValueError(f"alpha={alpha!r} must be an int >= 1 (columns per group, e.g. 8)")
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma={gamma!r} must be a finite number >= 0 (0 = conflict-free; conflicts per row allowed)")
    if row_block is not None and (isinstance(row_block, bool) or not isinstance(row_block, Integral)
                                  or row_block < 1):
        raise ValueError(f"row_block={row_block!r} must be None (no row split) or an int >= 1 (array rows)")


def _check_banks(banks, cols: int, alpha: int) -> np.ndarray | None:
    """``banks`` as an int64 vector of length ``cols`` with values in 0..alpha-1 (None stays None)."""
    if banks is None:
        return None
    b = _to_numpy(banks)
    if b.ndim != 1 or b.shape[0] != cols:
        raise ValueError(f"banks has shape {b.shape}, expected ({cols},): one bank per matrix column "
                         f"(bank = address mod alpha, e.g. np.arange({cols}) % {alpha})")
    if b.size and b.dtype.kind not in "iu":
        raise ValueError(f"banks must be integers (bank = address mod alpha), got dtype {b.dtype}; "
                         "pass an int array, e.g. banks.astype(int)")
    b = b.astype(np.int64)
    bad = (b < 0) | (b >= alpha)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"banks[{j}] = {int(b[j])} is outside 0..{alpha - 1}: banks must be in 0..alpha-1 "
                         f"for alpha={alpha} (bank = address mod alpha)")
    return b


def _bank_bits(banks: np.ndarray, alpha: int) -> np.ndarray:
    """One-hot bank bitmasks, (words, cols): bit ``banks[j] % width`` of word ``banks[j] // width``.

    The narrowest unsigned word that holds alpha bits (uint8 up to alpha 8); several uint64 words
    only past 64 banks.
    """
    width = next((w for w in (8, 16, 32) if alpha <= w), 64)
    word = np.dtype(f"uint{width}")
    out = np.zeros((-(-alpha // width), banks.shape[0]), dtype=word)
    out[banks // width, np.arange(banks.shape[0])] = np.left_shift(1, banks % width).astype(word)
    return out


def _budget(gamma: float, rows: int, alpha: int) -> int:
    """Conflicts allowed per group: floor(gamma * rows); a group can't exceed rows * (alpha - 1) anyway."""
    cap = rows * max(alpha - 1, 0)
    return cap if math.isinf(gamma) else min(math.floor(gamma * rows), cap)


def _block_bounds(rows: int, row_block: int | None) -> list[tuple[int, int]]:
    if row_block is None:
        return [(0, rows)]
    return [(a, min(a + row_block, rows)) for a in range(0, rows, row_block)]


# ---------------------------------------------------------------- public helpers


def conflicts(weight, group, rows=slice(None)) -> int:
    """Conflicts of one group: summed over rows, (nonzeros of the group in the row - 1) where positive."""
    w = _as_matrix(weight)
    per_row = (w[rows][:, list(group)] != 0).sum(axis=1)
    return int(np.maximum(per_row - 1, 0).sum())


def combine_columns(weight, alpha: int, gamma: float = 0.0, row_block: int | None = None,
                    banks=None) -> Packing:
    """Group the columns of ``weight`` (per row block) and combine-prune; deterministic.

    ``banks`` (optional, one int in 0..alpha-1 per column, e.g. ``address mod alpha``): the bank
    rule, every group holds at most one column per bank (the hardware reads input slot k of an
    array column from bank k). None: no rule.
    """
    w = _as_matrix(weight)
    _check_params(alpha, gamma, row_block)
    banks = _check_banks(banks, w.shape[1], alpha)
    bankbits = None if banks is None else _bank_bits(banks, alpha)
    bounds = _block_bounds(w.shape[0], row_block)
    nz = w != 0
    bits, counts = _pack_blocks(nz, bounds)
    budgets = np.array([_budget(gamma, b - a, alpha) for a, b in bounds], dtype=np.int64)
    gid = _fill(bits, counts, budgets, alpha, bankbits)
    gid = _dissolve(bits, counts, budgets, alpha, gid, bankbits)
    for blk in np.flatnonzero((counts > 0).sum(axis=1) <= _SMALL):  # tiny blocks: greedy is cheap there
        a, b = bounds[blk]
        theirs = _greedy_block(nz[a:b], alpha, int(budgets[blk]), banks)
        if _ngroups(theirs) < _ngroups(gid[blk]):
            gid[blk] = theirs
    return _packing(w, alpha, gamma, row_block, bounds, gid, conflict_free=not budgets.any())


def _ngroups(ids: np.ndarray) -> int:
    return len(np.unique(ids[ids >= 0]))


def _packing(w, alpha, gamma, row_block, bounds, gid, conflict_free=False) -> Packing:
    """Group ids per block -> the Packing, with groups ordered by lowest column and the prune mask."""
    tables = _tables(gid, alpha)
    blocks = tuple((a, b, groups) for (a, b), groups in zip(bounds, _groups_of(tables)))
    nz = w != 0
    k = max(1, bounds[0][1] - bounds[0][0]) if bounds else 1
    mask = nz if conflict_free else _prune_mask(w, tables, k)
    row_block = None if row_block is None else int(row_block)
    return Packing(w.shape, int(alpha), float(gamma), row_block, blocks, mask)


# ---------------------------------------------------------------- the algorithm


def _pack_blocks(nz: np.ndarray, bounds) -> tuple[np.ndarray, np.ndarray]:
    """Bit-pack each block's column supports: bits[b, :, c] = rows of block b where column c is nonzero.

    Returns bits (blocks, words, cols) and counts (blocks, cols) int64. Columns are the last axis so
    that summing popcounts over words adds whole contiguous planes. Blocks of up to 32 rows use
    uint8 words, taller ones uint64: numpy's popcount is SIMD for uint8 and as fast per byte for
    uint64, but 4x slower per byte for uint16 (measured), and narrow words keep the scans of small
    blocks short. The last block is padded with zero rows, which never conflict.
    """
    rows, cols = nz.shape
    k = max((b - a for a, b in bounds), default=0)
    nb = len(bounds)
    padded = np.zeros((nb * k, cols), dtype=bool)
    padded[:rows] = nz
    per_block = padded.reshape(nb, k, cols)
    counts = per_block.sum(axis=1, dtype=np.int64)
    word = np.uint8 if k <= 32 else np.uint64
    nbytes = max(1, -(-k // 8)) if k <= 32 else 8 * -(-k // 64)
    packed = np.packbits(per_block.transpose(0, 2, 1), axis=2, bitorder="little")  # (nb, cols, ceil(k/8))
    out = np.zeros((nb, cols, nbytes), dtype=np.uint8)
    out[:, :, : packed.shape[2]] = packed
    return np.ascontiguousarray(out.view(word).transpose(0, 2, 1)), counts


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows in common: popcount(a & b) summed over the last (word) axis, as int64."""
    return np.bitwise_count(a & b).sum(axis=-1, dtype=np.int64)


class _Scan:
    """Preallocated buffers for the scan of one fill step.

    Why: in the hot loop, fresh temporaries of a few hundred KB cost more than the arithmetic
    (page faults on every allocation; measured 10x on the 16-row-block case), so every
    elementwise op writes into a buffer that lives until the next compaction.
    """

    def __init__(self, shape: tuple[int, int, int], word, key_t, bankbits=None) -> None:
        nb, words, m = shape
        self.common = np.empty(shape, dtype=word)
        self.pop = np.empty(shape, dtype=np.uint8)
        rows = words * 8 * np.dtype(word).itemsize
        added_t = np.uint8 if rows < 256 else np.uint16 if rows < 65536 else np.int32
        self.added = self.pop[:, 0] if words == 1 else np.empty((nb, m), dtype=added_t)
        self.gain = np.empty((nb, m), dtype=key_t)
        self.fits = np.empty((nb, m), dtype=bool)
        if bankbits is not None:  # bank rule: (nb, bank words, m) bank bits of each candidate
            self.hit = np.empty(bankbits.shape, dtype=bankbits.dtype)

    def gains(self, bits, support, score, room, bankbits=None, used=None) -> tuple[np.ndarray, np.ndarray]:
        """(1 + rows newly covered, or 0 where infeasible or placed; conflicts added) per column.

        With ``bankbits`` a column whose bank is in ``used`` (the open group's banks) is infeasible.
        """
        np.bitwise_and(bits, support[:, :, None], out=self.common)
        np.bitwise_count(self.common, out=self.pop)
        if self.pop.shape[1] > 1:
            np.add.reduce(self.pop, axis=1, dtype=self.added.dtype, out=self.added)
        np.subtract(score, self.added, out=self.gain, casting="unsafe")  # added <= count: no wrap
        np.less_equal(self.added, room[:, None], out=self.fits)
        if bankbits is not None:
            np.bitwise_and(bankbits, used[:, :, None], out=self.hit)
            hit = self.hit[:, 0] if self.hit.shape[1] == 1 else np.bitwise_or.reduce(self.hit, axis=1)
            fits = self.fits.view(np.uint8)
            np.less(hit, fits, out=fits, casting="unsafe")  # hit < fits: fits and no bank hit; one pass
        np.multiply(self.gain, self.fits, out=self.gain, casting="unsafe")
        return self.gain, self.added


def _fill(bits: np.ndarray, counts: np.ndarray, budgets: np.ndarray, alpha: int,
          bankbits: np.ndarray | None = None) -> np.ndarray:
    """Sequential filling, all blocks in lockstep. Returns group ids (blocks, cols); -1 = all-zero column.

    Each step every block with columns left either adds its best feasible column to its open group
    or, when none fits, closes the group and opens a new one with its densest remaining column.
    The score of a column is 1 + rows it would newly cover (0 = not a candidate); a placed column's
    bits and score are zeroed, so it scores 0 without a separate mask, in the narrowest unsigned type.
    With ``bankbits`` (bank words, cols) each block keeps the bank bitmask of its open group, and a
    column whose bank bit is in it does not fit (the bank rule); the bits follow the compaction.
    """
    nb, words, n = bits.shape
    top = counts.max(initial=0)
    key_t = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top < np.iinfo(t).max)
    gid = np.full((nb, n), -1, dtype=np.int64)
    col = np.broadcast_to(np.arange(n), (nb, n))  # original column of each (compacted) slot
    score = (counts + (counts > 0)).astype(key_t)  # 1 + count for a column to place, 0 otherwise
    bits = np.where(counts[:, None, :] > 0, bits, 0)  # own copy; all-zero columns are "placed"
    nleft = (counts > 0).sum(axis=1)
    support = np.zeros((nb, words), dtype=bits.dtype)  # rows the open group covers
    conf = np.zeros(nb, dtype=np.int64)
    size = np.full(nb, alpha, dtype=np.int64)  # "full": the first step opens a group
    opened = np.zeros(nb, dtype=np.int64)
    rows = np.arange(nb)
    if bankbits is not None:  # (nb, bank words, cols): read-only view until the first compaction
        bankbits = np.broadcast_to(bankbits, (nb,) + bankbits.shape)
        used = np.zeros((nb, bankbits.shape[1]), dtype=bankbits.dtype)  # banks of the open group
    scan = _Scan(bits.shape, bits.dtype, key_t, bankbits)
    room_max = np.iinfo(scan.added.dtype).max
    while True:
        live = np.flatnonzero(nleft)  # finished blocks keep computing (harmlessly) but record nothing
        if live.size == 0:
            return gid
        m = int(nleft.max())
        if 8 * m <= 7 * bits.shape[2]:  # compact: keep only unplaced columns, in column order
            keep = np.argsort(score == 0, axis=1, kind="stable")[:, :m]
            bits = np.take_along_axis(bits, keep[:, None, :], axis=2)
            score, col = np.take_along_axis(score, keep, axis=1), np.take_along_axis(col, keep, axis=1)
            if bankbits is not None:
                bankbits = np.take_along_axis(bankbits, keep[:, None, :], axis=2)
            scan = _Scan(bits.shape, bits.dtype, key_t, bankbits)
        room = np.minimum(budgets - conf, room_max).astype(scan.added.dtype)  # conflicts still allowed
        if bankbits is None:
            gain, added = scan.gains(bits, support, score, room)
        else:
            gain, added = scan.gains(bits, support, score, room, bankbits, used)
        pick = gain.argmax(axis=1)
        grow = (gain[rows, pick] > 0) & (size < alpha)
        if not grow.all():  # nothing fits: the densest left column opens a new group
            fresh = np.flatnonzero(~grow)
            pick[fresh] = score[fresh].argmax(axis=1)
        chosen = bits[rows, :, pick]
        support = np.where(grow[:, None], support | chosen, chosen)
        if bankbits is not None:
            bank = bankbits[rows, :, pick]
            used = np.where(grow[:, None], used | bank, bank)
        conf = np.where(grow, conf + added[rows, pick], 0)
        size = np.where(grow, size + 1, 1)
        opened += ~grow
        p = pick[live]
        gid[live, col[live, p]] = opened[live] - 1
        score[live, p] = 0
        bits[live, :, p] = 0
        nleft[live] -= 1


def _members(gid: np.ndarray, alpha: int) -> np.ndarray:
    """members[b, g, slot] = the columns of group g of block b, ascending, padded with -1."""
    nb = gid.shape[0]
    G = int(gid.max(initial=-1)) + 1
    b_idx, c_idx = np.nonzero(gid >= 0)  # sorted by block, then column
    g_idx = gid[b_idx, c_idx]
    order = np.argsort(b_idx * G + g_idx, kind="stable")  # by block, group; columns stay ascending
    b_s, g_s, c_s = b_idx[order], g_idx[order], c_idx[order]
    first = np.r_[True, (b_s[1:] != b_s[:-1]) | (g_s[1:] != g_s[:-1])]
    start = np.maximum.accumulate(np.where(first, np.arange(len(b_s)), 0))
    members = np.full((nb, G, alpha), -1, dtype=np.int64)
    members[b_s, g_s, np.arange(len(b_s)) - start] = c_s
    return members


_SMALL = 32  # blocks with at most this many nonzero columns also try the greedy merge (~1 ms each)
_VICTIMS = 32  # groups per block the repair tries to empty, smallest first: bounds its cost


def _dissolve(bits, counts, budgets, alpha, gid, bankbits=None) -> np.ndarray:
    """Repair sweep: try to empty the smallest groups into groups that still have room.

    A group's columns move one at a time to the feasible group they add the fewest conflicts to;
    if any column fits nowhere, that block's attempt is rolled back. Blocks run in lockstep again.
    It saves a group in a few percent of small and mid-sized blocks (0.3% of all groups on random
    33-200 column matrices), rarely anything on large random ones. With ``bankbits`` (bank words,
    cols) every group keeps the bank mask of its columns, and a column moves only into a group
    that does not hold its bank yet.
    """
    members = _members(gid, alpha)
    nb, G, _ = members.shape
    if G < 2:
        return gid
    bits = bits.transpose(0, 2, 1)  # (blocks, cols, words): one column's words together
    b_idx, c_idx = np.nonzero(gid >= 0)
    g_idx = gid[b_idx, c_idx]
    support = np.zeros((nb, G, bits.shape[2]), dtype=bits.dtype)
    np.bitwise_or.at(support, (b_idx, g_idx), bits[b_idx, c_idx])
    size = (members >= 0).sum(axis=2)
    total = np.zeros((nb, G), dtype=np.int64)
    np.add.at(total, (b_idx, g_idx), counts[b_idx, c_idx])
    # room[b, g]: conflicts group g can still take, -1 if it takes no column (full, or gone)
    room = budgets[:, None] - (total - np.bitwise_count(support).sum(axis=2, dtype=np.int64))
    room = np.where((size > 0) & (size < alpha), room, -1)
    if bankbits is not None:
        colbanks = bankbits.T  # (cols, bank words)
        gbanks = np.zeros((nb, G, colbanks.shape[1]), dtype=colbanks.dtype)  # banks each group holds
        np.bitwise_or.at(gbanks, (b_idx, g_idx), colbanks[c_idx])
    blocks = np.arange(nb)
    victims = np.argsort(np.where(size > 0, size, alpha + 1), axis=1, kind="stable")[:, :_VICTIMS]
    for v in victims.T:
        trying = size[blocks, v] > 0
        if not trying.any():
            continue
        saved_room = room[blocks, v].copy()
        room[blocks, v] = -1  # a group does not take its own columns
        undo = []  # (blocks, group, support, room, size, banks) before each move
        for slot in range(alpha):
            c = members[blocks, v, slot]
            act = np.flatnonzero(trying & (c >= 0))
            if act.size == 0:
                break
            cb = bits[act, c[act]]
            added = _overlap(support[act], cb[:, None, :])
            ok = added <= room[act]
            if bankbits is not None:  # the bank rule: only into groups without this column's bank
                ok &= ~(gbanks[act] & colbanks[c[act]][:, None, :]).any(axis=2)
            k = np.where(ok, added, np.iinfo(np.int64).max).argmin(axis=1)
            r = np.arange(act.size)
            fits = ok[r, k]
            trying[act[~fits]] = False
            a, k, r = act[fits], k[fits], r[fits]
            undo.append((a, k, support[a, k], room[a, k], size[a, k],
                         None if bankbits is None else gbanks[a, k]))
            if bankbits is not None:
                gbanks[a, k] |= colbanks[c[a]]
            support[a, k] |= cb[r]
            size[a, k] += 1
            room[a, k] = np.where(size[a, k] < alpha, room[a, k] - added[r, k], -1)
            members[a, k, size[a, k] - 1] = c[a]
        for a, k, sup, rm, sz, gb in reversed(undo):  # roll back blocks where some column did not fit
            bad = ~trying[a]
            a, k = a[bad], k[bad]
            members[a, k, sz[bad]] = -1
            support[a, k], room[a, k], size[a, k] = sup[bad], rm[bad], sz[bad]
            if gb is not None:
                gbanks[a, k] = gb[bad]
        room[blocks, v] = np.where(trying, -1, saved_room)
        done = np.flatnonzero(trying)
        size[done, v[done]] = 0
        members[done, v[done]] = -1
    # renumber from the tables: group g of block b is members[b, g]
    out = np.full_like(gid, -1)
    bb, gg, _ = np.nonzero(members >= 0)
    out[bb, members[members >= 0]] = gg
    return out


def _tables(gid: np.ndarray, alpha: int) -> np.ndarray:
    """Per block, the groups as a (groups, alpha) column table ordered by lowest column (pad -1)."""
    members = _members(gid, alpha)
    lowest = np.where(members[:, :, 0] >= 0, members[:, :, 0], np.iinfo(np.int64).max)
    order = np.argsort(lowest, axis=1, kind="stable")
    used = int((members[:, :, 0] >= 0).sum(axis=1).max(initial=0))  # empty slots sort last: drop them
    return np.take_along_axis(members, order[:, :used, None], axis=1)


def _groups_of(tables: np.ndarray) -> list[Groups]:
    """Tables -> per block a tuple of column tuples (one flat tolist, then slices: fast for 10^5 groups)."""
    valid = tables >= 0
    flat = tables[valid].tolist()
    ends = np.cumsum(valid.sum(axis=2).ravel()).tolist()
    starts = [0] + ends[:-1]
    groups = [tuple(flat[i:j]) for i, j in zip(starts, ends) if j > i]
    per_block = np.cumsum((valid[:, :, 0]).sum(axis=1)).tolist()
    return [tuple(groups[i:j]) for i, j in zip([0] + per_block[:-1], per_block)]


def _prune_mask(w: np.ndarray, tables: np.ndarray, block_rows: int) -> np.ndarray:
    """Combine-pruning: per row per group keep the largest |weight| (ties: lowest column); drop the rest.

    Works a few MB of rows at a time, one group slot at a time: ``best`` holds each (row, group)'s
    largest magnitude so far and ``slot`` where it is; a later slot wins only if strictly larger,
    and table rows are ascending, so ties go to the lowest column. Short groups are padded with
    an extra zero column, which never wins.
    """
    rows, cols = w.shape
    nb, G, alpha = tables.shape
    mask = np.zeros((rows, cols), dtype=bool)
    if G == 0 or rows == 0:
        return mask
    tables = np.where(tables >= 0, tables, cols)
    step = max(1, (1 << 20) // max(cols, G * (alpha if nb > 1 else 1)))
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        mag = np.zeros((r1 - r0, cols + 1), dtype=np.result_type(w.dtype, np.float32))
        np.abs(w[r0:r1].astype(mag.dtype), out=mag[:, :cols])  # cast first: abs(int8 -128) wraps
        if nb > 1:  # each row reads its own block's table
            t = tables[np.arange(r0, r1) // block_rows]
            local = np.arange(r1 - r0)[:, None]
            plane = lambda s: mag[local, t[:, :, s]]  # noqa: E731
        else:
            t = tables[0]
            plane = lambda s: np.take(mag, t[:, s], axis=1)  # noqa: E731
        best = plane(0)
        slot = np.zeros(best.shape, dtype=np.uint8)
        for s in range(1, alpha):
            cand = plane(s)
            np.maximum(slot, (cand > best).view(np.uint8) * np.uint8(s), out=slot)
            np.maximum(best, cand, out=best)
        rr, gg = np.nonzero(best > 0)
        kept = t[rr, gg, slot[rr, gg]] if nb > 1 else t[gg, slot[rr, gg]]
        mask[rr + r0, kept] = True
    return mask


# ---------------------------------------------------------------- checking a packing


def check_packing(weight, packing: Packing, banks=None) -> None:
    """Raise ValueError naming the first violated invariant; return None if the packing is sound.

    ``weight`` may be the matrix as combined or as trained/quantized afterwards: weights may have
    become zero since (a grouped column may be all zero now), but a nonzero outside ``packing.mask``
    means combine-pruning was not applied, and the hardware would silently drop it. With ``banks``
    (as for :func:`combine_columns`) it also checks the bank rule: no two columns of a group in one
    bank.
    """
    w = _as_matrix(weight)
    p = packing
    if tuple(w.shape) != tuple(p.shape):
        raise ValueError(f"packing is for shape {p.shape}, weight has shape {w.shape}")
    if p.mask.shape != w.shape or p.mask.dtype != bool:
        raise ValueError(f"packing.mask must be bool of shape {w.shape}, got {p.mask.dtype} {p.mask.shape}")
    _check_params(p.alpha, p.gamma, p.row_block)
    banks = _check_banks(banks, w.shape[1], p.alpha)
    bounds = [(a, b) for a, b, _ in p.blocks]
    if bounds != _block_bounds(w.shape[0], p.row_block):
        raise ValueError(f"packing.blocks rows {bounds} do not split {w.shape[0]} rows into "
                         f"consecutive blocks of row_block={p.row_block}")
    stray = (w != 0) & ~p.mask
    if stray.any():
        r, c = np.argwhere(stray)[0]
        raise ValueError(f"weight[{r}, {c}] is nonzero but not in packing.mask: combine-pruning mask not applied")
    cols = w.shape[1]
    for a, b, groups in p.blocks:
        where = f"rows {a}:{b}"
        sizes = np.array([len(g) for g in groups], dtype=np.int64)
        if ((sizes < 1) | (sizes > p.alpha)).any():
            g = groups[int(np.argmax((sizes < 1) | (sizes > p.alpha)))]
            raise ValueError(f"{where}: group {g} has {len(g)} columns, allowed 1..alpha={p.alpha}")
        flat = np.array([c for g in groups for c in g], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        rising = np.diff(flat, prepend=-1) > 0
        rising[starts] = True
        if flat.size and (not rising.all() or flat.min() < 0 or flat.max() >= cols):
            raise ValueError(f"{where}: groups must be ascending column indices in 0..{cols - 1}")
        seen = np.bincount(flat, minlength=cols)
        if (seen > 1).any():
            raise ValueError(f"{where}: column(s) {np.flatnonzero(seen > 1)[:8].tolist()} in more than one group")
        if banks is not None and flat.size:
            gidx = np.repeat(np.arange(len(groups)), sizes)
            key = gidx * p.alpha + banks[flat]
            order = np.argsort(key, kind="stable")  # a group's columns in one bank become neighbours
            dup = np.flatnonzero(key[order][1:] == key[order][:-1])
            if dup.size:
                i, j = order[dup[0]], order[dup[0] + 1]
                g = int(gidx[i])
                raise ValueError(f"{where}: group {g} {groups[g]} has columns {int(flat[i])} and {int(flat[j])} "
                                 f"both in bank {int(banks[flat[i]])}; the bank rule allows one column per bank "
                                 "(combine with banks=..., or split_banks an old packing)")
        if flat.size:
            taken = p.mask[a:b][:, flat].view(np.uint8)
            kept = np.add.reduceat(taken, starts, axis=1, dtype=np.int32) if b > a else np.zeros((0, 0))
            if (kept > 1).any():
                r, g = np.argwhere(kept > 1)[0]
                raise ValueError(f"row {a + r}: group {groups[g]} keeps {int(kept[r, g])} weights; "
                                 "combine-pruning must keep at most one per row per group")
        loose = p.mask[a:b].any(axis=0) & (seen == 0)
        if loose.any():
            raise ValueError(f"{where}: column(s) {np.flatnonzero(loose)[:8].tolist()} have kept weights "
                             "but are in no group (groups must cover every nonzero column)")


# ---------------------------------------------------------------- the bank rule for old packings


def split_banks(packing: Packing, banks) -> Packing:
    """Split every group whose columns share a bank into the fewest subgroups with distinct banks.

    For packings made without the bank rule (older checkpoints). Greedy: each member, in ascending
    column order, goes to the first subgroup that does not hold its bank yet, so a group needs as
    many subgroups as its most crowded bank has members (the fewest possible). A block with a split
    has its groups reordered by lowest column, as :func:`combine_columns` orders them; other blocks
    come back as they are, so a packing that obeys the rule comes back equal. The mask is unchanged:
    a subgroup keeps at most the one weight per row its group kept, so splitting never drops one.
    """
    banks = _check_banks(banks, packing.shape[1], packing.alpha)
    cols = packing.shape[1]
    blocks = []
    for a, b, groups in packing.blocks:
        sizes = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
        flat = np.fromiter((c for g in groups for c in g), dtype=np.int64, count=int(sizes.sum()))
        if flat.size and (flat.min() < 0 or flat.max() >= cols):
            raise ValueError(f"rows {a}:{b}: a group has columns outside 0..{cols - 1}; "
                             "check_packing names what is wrong with this packing")
        key = np.repeat(np.arange(len(groups)), sizes) * packing.alpha + banks[flat]
        key.sort()
        clashing = set((key[1:][key[1:] == key[:-1]] // packing.alpha).tolist())
        if not clashing:  # nothing to split: the block as it is
            blocks.append((a, b, groups))
            continue
        out = []
        for i, g in enumerate(groups):
            if i not in clashing:
                out.append(tuple(g))
                continue
            subs: list[list[int]] = []
            seen: dict[int, int] = {}  # bank -> members so far = the subgroup its next member goes to
            for c in sorted(g):
                k = seen.get(int(banks[c]), 0)
                seen[int(banks[c])] = k + 1
                if k == len(subs):
                    subs.append([])
                subs[k].append(int(c))
            out.extend(tuple(s) for s in subs)
        out.sort(key=lambda s: s[0] if s else -1)  # stable: by lowest column, as combine_columns orders groups
        blocks.append((a, b, tuple(out)))
    return Packing(packing.shape, packing.alpha, packing.gamma, packing.row_block, tuple(blocks), packing.mask)


# ---------------------------------------------------------------- the reference greedy merge


def greedy_combine_reference(weight, alpha: int, gamma: float = 0.0, row_block: int | None = None,
                             banks=None) -> Packing:
    """The classic greedy merge, for comparison: slow, simple, and the yardstick in tests and the bench.

    Start with every nonzero column as its own group; repeatedly merge the feasible pair of groups
    with the fewest resulting conflicts (ties: smaller merged size, then lowest group, then lowest
    partner, a group being named by its lowest column); stop when no pair is feasible. Merged
    conflicts are conf(A) + conf(B) + |rows(A) & rows(B)|, so only the merged group's row of the
    pairwise table changes after a merge; the decisions equal those of recomputing every pair.
    With ``banks`` (as for :func:`combine_columns`) only groups with disjoint banks merge.
    """
    w = _as_matrix(weight)
    _check_params(alpha, gamma, row_block)
    banks = _check_banks(banks, w.shape[1], alpha)
    bounds = _block_bounds(w.shape[0], row_block)
    gid = np.full((len(bounds), w.shape[1]), -1, dtype=np.int64)
    for blk, (a, b) in enumerate(bounds):
        gid[blk] = _greedy_block(w[a:b] != 0, alpha, _budget(gamma, b - a, alpha), banks)
    return _packing(w, alpha, gamma, row_block, bounds, gid)


def _greedy_block(nz: np.ndarray, alpha: int, budget: int, banks: np.ndarray | None = None) -> np.ndarray:
    """The greedy merge on one block: group id per column (-1 = all zero).

    Slot i holds the group whose lowest column is the i-th nonzero column; a merge keeps the lower
    slot. Each slot remembers its best partner among higher slots, so a merge only recomputes the
    merged slot and the slots whose best partner it was: same decisions as rescanning every pair.
    With ``banks``, ``clash[i, j]`` counts the banks two slots share and a merge needs it 0; it is
    kept up to date like ``overlap``.
    """
    cols = np.flatnonzero(nz.any(axis=0))
    n = len(cols)
    out = np.full(nz.shape[1], -1, dtype=np.int64)
    if n == 0:
        return out
    dense = nz[:, cols].T.astype(np.float32)
    overlap = (dense @ dense.T).astype(np.int64)  # rows two columns share (exact below 2**24 rows)
    del dense
    sup = _pack_blocks(nz[:, cols], [(0, nz.shape[0])])[0][0].T.copy()  # (n, words) row supports
    if banks is not None:
        hot = banks[cols][:, None] == np.arange(alpha)  # (n, alpha): the banks each slot holds
        clash = hot.astype(np.int64) @ hot.T.astype(np.int64)
    conf = np.zeros(n, dtype=np.int64)
    size = np.ones(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    owner = np.arange(n)
    slots = np.arange(n)
    never = np.iinfo(np.int64).max

    def keys(rows: np.ndarray) -> np.ndarray:  # merge key of (row, higher slot); never = infeasible
        merged = conf[rows, None] + conf[None, :] + overlap[rows]
        joint = size[rows, None] + size[None, :]
        ok = (slots > rows[:, None]) & alive & (joint <= alpha) & (merged <= budget)
        if banks is not None:
            ok &= clash[rows] == 0
        return np.where(ok, merged * (2 * alpha + 1) + joint, never)

    best_k = np.empty(n, dtype=np.int64)
    best_j = np.empty(n, dtype=np.int64)

    def refresh(rows: np.ndarray) -> None:
        for part in np.array_split(rows, max(1, len(rows) * n // (1 << 22))):
            k = keys(part)
            best_j[part] = k.argmin(axis=1)
            best_k[part] = k[np.arange(len(part)), best_j[part]]

    refresh(slots)
    while True:
        i = int(best_k.argmin())  # smallest key, then lowest slot, then (best_j) lowest partner
        if best_k[i] == never:
            break
        j = int(best_j[i])
        conf[i] += conf[j] + overlap[i, j]
        size[i] += size[j]
        alive[j], best_k[j] = False, never
        owner[owner == j] = i
        sup[i] |= sup[j]
        overlap[i, :] = overlap[:, i] = _overlap(sup, sup[i])
        if banks is not None:
            hot[i] |= hot[j]
            clash[i, :] = clash[:, i] = (hot & hot[i]).sum(axis=1)
        stale = np.flatnonzero(alive & ((best_j == i) | (best_j == j) | (slots == i)))
        refresh(stale)
        low = np.flatnonzero(alive[:i])  # lower slots: (x, i) is a new candidate for them
        low = low[~np.isin(low, stale)]
        merged, joint = conf[low] + conf[i] + overlap[low, i], size[low] + size[i]
        feasible = (joint <= alpha) & (merged <= budget)
        if banks is not None:
            feasible &= clash[low, i] == 0
        k = np.where(feasible, merged * (2 * alpha + 1) + joint, never)
        better = (k < best_k[low]) | ((k == best_k[low]) & (i < best_j[low]))
        best_k[low[better]], best_j[low[better]] = k[better], i
    out[cols] = owner
    return out


# ---------------------------------------------------------------- layer adapters


def lstm_matrix(weight_ih, weight_hh) -> np.ndarray:
    """[W_ih | W_hh] with rows interleaved unit-major: row 4*j + k is gate k (i, f, g, o) of unit j.

    Why: the pointwise unit needs all four gates of a hidden unit inside one row block of the array.
    """
    wi, wh = _as_matrix(weight_ih, "weight_ih"), _as_matrix(weight_hh, "weight_hh")
    four_h, hidden = wh.shape
    if four_h != 4 * hidden or wi.shape[0] != four_h:
        raise ValueError(f"weight_ih {wi.shape} / weight_hh {wh.shape} are not an LSTM layer's "
                         "(4H x I) / (4H x H)")
    m = np.concatenate([wi, wh], axis=1)
    return m.reshape(4, hidden, -1).transpose(1, 0, 2).reshape(four_h, -1)


def lstm_unmatrix(matrix, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`lstm_matrix`: (W_ih-shaped, W_hh-shaped) in PyTorch row order; bool masks too."""
    m = _to_numpy(matrix)
    if m.ndim != 2 or m.shape[0] % 4 or m.shape[1] != input_size + m.shape[0] // 4:
        raise ValueError(f"matrix {m.shape} is not an LSTM [W_ih | W_hh] with input_size={input_size}")
    m = m.reshape(m.shape[0] // 4, 4, -1).transpose(1, 0, 2).reshape(m.shape[0], -1)
    return m[:, :input_size].copy(), m[:, input_size:].copy()


def linear_matrix(weight) -> np.ndarray:
    """A Linear layer presents W (out x in) itself."""
    return _as_matrix(weight)


def conv2d_matrix(weight) -> np.ndarray:
    """A Conv2d layer presents out x (in * kh * kw): one array column per input pixel of a filter."""
    w = _to_numpy(weight)
    if w.ndim != 4:
        raise ValueError(f"conv2d weight must be 4-D (out, in, kh, kw), got shape {w.shape}")
    return w.reshape(w.shape[0], -1)


def conv2d_unmatrix(matrix, weight_shape) -> np.ndarray:
    """Inverse of :func:`conv2d_matrix` (masks too)."""
    return _to_numpy(matrix).reshape(tuple(weight_shape))
