"""Comparator networks for the separable 3-wide median filter (smoothAdd's median, exact).

The median of a 3×…×3 window is computed one axis ("level") at a time. Level `lv` turns, for every
position, the sorted lists of the window along the previous axes (length m = 3^lv) at the
positions p−1, p, p+1 of its own axis into the sorted list of length 3m (or, at the last level,
only its middle element). Every list is computed once per position and read by three windows of the
next level, so the work per element stays a few hundred min/max operations instead of sorting 81
values per window.

This module only builds the networks (pure Python, no tensors): a `Program` is a list of
min/max operations over named inputs ``(label, rank)`` (label −1, 0, +1: the neighbour list; at a
border SciPy's "reflect" mode repeats the border, so a window reads label 0 twice), temporaries and
outputs. The builder tracks which values are known to be ≤ which others, skips every comparison
whose outcome is known, and keeps only the operations the requested outputs depend on. The single
median of the last level is selected by sorting index-aligned triples of the three lists and
dropping values whose known rank bounds exclude the median, a few rounds, before merging what is
left; for the other levels the three lists are merged (Batcher's odd-even merge). The best of a few
such strategies (fewest operations) is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

WINDOWS = {"first": (0, 0, 1), "mid": (-1, 0, 1), "last": (-1, 0, 0)}
_PAD = -1   # +inf padding of a merge input


class _Net:
    """Nodes: ("in", label, rank) or ("min"|"max", a, b); below[x] / above[x]: bitmasks of the
    nodes known to be ≤ x / ≥ x (sound, not necessarily complete)."""

    def __init__(self):
        self.nodes: list[tuple] = []
        self.below: list[int] = []
        self.above: list[int] = []
        self.memo: dict = {}

    def sorted_list(self, label, m: int) -> list[int]:
        ids = []
        for r in range(m):
            i = len(self.nodes)
            self.nodes.append(("in", label, r))
            self.below.append(1 << i)
            self.above.append(1 << i)
            ids.append(i)
        for j, b in enumerate(ids):          # a sorted list: earlier ≤ later
            for a in ids[:j]:
                self.below[b] |= 1 << a
                self.above[a] |= 1 << b
        return ids

    def le(self, a: int, b: int) -> bool:
        return a == b or bool((self.below[b] >> a) & 1) or bool((self.above[a] >> b) & 1)

    def cmp(self, a: int, b: int) -> tuple[int, int]:
        """(min, max) of two nodes; no new node when the order is known."""
        if self.le(a, b):
            return a, b
        if self.le(b, a):
            return b, a
        key = (a, b) if a < b else (b, a)
        if key in self.memo:
            return self.memo[key]
        lo, hi = len(self.nodes), len(self.nodes) + 1
        self.nodes += [("min", a, b), ("max", a, b)]
        both = (1 << lo) | (1 << hi)
        self.below += [(self.below[a] & self.below[b]) | (1 << lo), self.below[a] | self.below[b] | both]
        self.above += [self.above[a] | self.above[b] | both, (self.above[a] & self.above[b]) | (1 << hi)]
        self.memo[key] = (lo, hi)
        self._close(lo)
        self._close(hi)
        return lo, hi

    def _close(self, n: int) -> None:
        """Derive more relations of node n from older op nodes, then tell the others about n."""
        below, above = self.below[n], self.above[n]
        for z in range(n):
            kind, p, q = self.nodes[z]
            if kind == "in":
                continue
            pb, qb = (below >> p) & 1, (below >> q) & 1
            pa, qa = (above >> p) & 1, (above >> q) & 1
            if not (below >> z) & 1 and ((kind == "max" and pb and qb) or (kind == "min" and (pb or qb))):
                below |= self.below[z]
            if not (above >> z) & 1 and ((kind == "min" and pa and qa) or (kind == "max" and (pa or qa))):
                above |= self.above[z]
        self.below[n], self.above[n] = below, above
        for mask, table, extra in ((below & ~(1 << n), self.above, above), (above & ~(1 << n), self.below, below)):
            while mask:
                low = mask & -mask
                table[low.bit_length() - 1] |= extra
                mask ^= low

    def cone(self, outs) -> set[int]:
        need, stack = set(), list(outs)
        while stack:
            x = stack.pop()
            if x not in need:
                need.add(x)
                if self.nodes[x][0] != "in":
                    stack += [self.nodes[x][1], self.nodes[x][2]]
        return need


def _oddeven_merge(lo: int, n: int, r: int, out: list) -> None:
    """Batcher's odd-even merge of positions lo..lo+n-1 (two sorted halves), comparator step r."""
    step = 2 * r
    if step < n:
        _oddeven_merge(lo, n, step, out)
        _oddeven_merge(lo + r, n, step, out)
        out.extend((i, i + r) for i in range(lo + r, lo + n - r, step))
    else:
        out.append((lo, lo + r))


def _merge(net: _Net, a: list, b: list) -> list:
    """Merge two sorted node lists into one (padding with +inf to a power of two)."""
    n = 1 << max(0, math.ceil(math.log2(max(len(a), len(b)))))
    w = list(a) + [_PAD] * (n - len(a)) + list(b) + [_PAD] * (n - len(b))
    comps: list = []
    _oddeven_merge(0, 2 * n, 1, comps)
    for i, j in comps:
        if w[j] == _PAD:
            continue
        if w[i] == _PAD:
            w[i], w[j] = w[j], w[i]
            continue
        w[i], w[j] = net.cmp(w[i], w[j])
    return [x for x in w if x != _PAD]


def _sort_small(net: _Net, xs: list) -> list:
    if len(xs) == 2:
        return list(net.cmp(*xs))
    if len(xs) == 3:
        a, b = net.cmp(xs[0], xs[1])
        b, c = net.cmp(b, xs[2])
        a, b = net.cmp(a, b)
        return [a, b, c]
    return list(xs)


def _eliminate(net: _Net, lists: list, k: int) -> tuple[list, int]:
    """Drop list ends whose known rank bounds exclude rank k (0-based) of the union; return the
    remaining lists and the rank of the same value among what remains. A node may stand in
    several lists (a repeated neighbour): it counts once per occurrence."""
    lists = [list(x) for x in lists if x]
    changed = True
    while changed:
        changed = False
        count: dict = {}
        for x in lists:
            for v in x:
                count[v] = count.get(v, 0) + 1
        live = 0
        for v in count:
            live |= 1 << v
        n = sum(count.values())
        single = n == len(count)

        def weight(mask: int) -> int:
            mask &= live
            if single:
                return mask.bit_count()
            total = 0
            while mask:
                low = mask & -mask
                total += count[low.bit_length() - 1]
                mask ^= low
            return total
        for x in lists:
            for end in (x[0], x[-1]):
                if weight(net.below[end]) >= k + 2:             # the value's rank ≥ k + 1
                    x.remove(end)
                elif weight(net.above[end]) >= n - k + 1:       # the value's rank ≤ k − 1
                    x.remove(end)
                    k -= 1
                else:
                    continue
                changed = True
                break
            if changed:
                break
        lists = [x for x in lists if x]
    return lists, k


def _select(net: _Net, lists: list, k: int, rounds: int) -> int:
    """The node holding rank k of the union of sorted lists: `rounds` times sort the
    index-aligned entries of the lists (the lists stay sorted) and eliminate; then merge."""
    if rounds:
        lists, k = _eliminate(net, lists, k)
    for _ in range(rounds):
        if sum(map(len, lists)) == 1 or len(lists) < 2:
            break
        width = max(map(len, lists))
        rows = [_sort_small(net, [x[r] for x in lists if r < len(x)]) for r in range(width)]
        lists = [[row[g] for row in rows if g < len(row)] for g in range(len(lists))]
        lists, k = _eliminate(net, lists, k)
    lists.sort(key=len)
    merged = lists[0]
    for x in lists[1:]:
        merged = _merge(net, merged, x)
    return merged[k]


@dataclass(frozen=True)
class Program:
    """Operations of one level for one window type.

    ops: (is_max, dst, a, b); an operand or dst is ("in", label, rank) | ("t", slot) | ("o", i).
    copies: (dst ("o", i), src) for outputs that are an input or another output.
    inputs: the input ranks read, per label."""

    ops: tuple
    copies: tuple
    n_temps: int
    inputs: tuple

    @property
    def cost(self) -> int:
        return len(self.ops) + len(self.copies)


def _linearize(net: _Net, outs: list) -> Program:
    cone = net.cone(outs)
    order = sorted(x for x in cone if net.nodes[x][0] != "in")
    out_of: dict[int, int] = {}
    copies = []
    for i, node in enumerate(outs):
        if node in out_of or net.nodes[node][0] == "in":
            copies.append((("o", i), None, node))
        else:
            out_of[node] = i
    last = {}
    for step, x in enumerate(order):
        for operand in net.nodes[x][1:]:
            last[operand] = step
    free: list[int] = []
    slot: dict[int, int] = {}
    n_temps = 0

    def ref(x):
        kind, p, q = net.nodes[x]
        if kind == "in":
            return ("in", p, q)
        return ("o", out_of[x]) if x in out_of else ("t", slot[x])

    ops = []
    for step, x in enumerate(order):
        if x not in out_of:
            if free:
                slot[x] = free.pop()
            else:
                slot[x], n_temps = n_temps, n_temps + 1
        kind, a, b = net.nodes[x]
        ops.append((kind == "max", ref(x), ref(a), ref(b)))
        for operand in {a, b}:
            if last.get(operand) == step and operand in slot:
                free.append(slot[operand])
    copy_ops = tuple((dst, ref(src)) for dst, _, src in copies)
    inputs: dict = {}
    for x in cone:
        if net.nodes[x][0] == "in":
            inputs.setdefault(net.nodes[x][1], set()).add(net.nodes[x][2])
    return Program(tuple(ops), copy_ops, n_temps,
                   tuple(sorted((lab, tuple(sorted(r))) for lab, r in inputs.items())))


def _build(m: int, window: tuple, needed: tuple, rounds: int) -> Program:
    net = _Net()
    lists = {lab: net.sorted_list(lab, m) for lab in dict.fromkeys(window)}
    # A repeated list first: merging a list with itself costs nothing.
    src = [lists[lab] for lab in sorted(window, key=lambda lab: -window.count(lab))]
    if len(needed) == 1:
        outs = [_select(net, src, needed[0], rounds)]
    else:
        merged = _merge(net, _merge(net, src[0], src[1]), src[2])
        outs = [merged[r] for r in needed]
    return _linearize(net, outs)


def _relabel(prog: Program, mapping: dict) -> Program:
    def ref(r):
        return ("in", mapping[r[1]], r[2]) if r[0] == "in" else r
    return Program(tuple((mx, ref(d), ref(a), ref(b)) for mx, d, a, b in prog.ops),
                   tuple((d, ref(src)) for d, src in prog.copies), prog.n_temps,
                   tuple(sorted((mapping[lab], ranks) for lab, ranks in prog.inputs)))


@lru_cache(maxsize=None)
def level_program(m: int, window: tuple, needed: tuple) -> Program:
    """The cheapest program found that computes ranks `needed` of the sorted union of the three
    sorted length-m lists named by `window` (labels, e.g. (-1, 0, 1) or (0, 0, 1)). The "last"
    window's program is the "first" one with label +1 read as −1 (so both borders of an axis can
    run as one sequence of operations).

    A single rank (the median) is selected after some rounds of aligned sorting (the fewest
    operations of a few tries); everything else is merged."""
    if window == WINDOWS["last"]:     # the mirror of "first": the same operations (see filters)
        return _relabel(level_program(m, WINDOWS["first"], needed), {0: 0, 1: -1})
    strategies = ((4, 6) if len(set(window)) == 3 else (0, 1, 2, 4)) if len(needed) == 1 else (0,)
    return min((_build(m, window, needed, s) for s in strategies), key=lambda p: p.cost)


def level_types(size: int) -> tuple[str, ...]:
    """Window types along an axis of `size` (≥ 2) positions."""
    return ("first", "last") if size == 2 else ("first", "mid", "last")


@lru_cache(maxsize=None)
def median_programs(kinds: tuple) -> tuple:
    """Per level (kinds[lv] = 2 for an axis of two positions, 3 for three or more): a dict
    window type → Program, and the ranks the level outputs. The last level outputs the median."""
    d = len(kinds)
    needed = ((3 ** d - 1) // 2,)
    levels = []
    for lv in reversed(range(d)):
        progs = {t: level_program(3 ** lv, WINDOWS[t], needed) for t in level_types(kinds[lv])}
        levels.append((progs, needed))
        needed = tuple(sorted({r for p in progs.values() for _, ranks in p.inputs for r in ranks}))
    return tuple(reversed(levels))
