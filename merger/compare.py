"""Compare two checkpoints block by block: `python -m merger diff A B`, the tab's Compare section.

For every block of the detected architecture (26 SD1/SD2, 20 SDXL, 61 Flux; keys map to blocks
exactly as merges map them) and every component (UNet, text encoders, VAE, other), over all float
keys of the group that both files hold with the same shape, flattened and taken together:

    cosine   = ⟨A, B⟩ / (‖A‖·‖B‖)        (None when A or B is all zero)
    rel_dist = ‖B − A‖ / ‖A‖             (0 when B = A; None when A is all zero and B is not)

Streaming: each key of each file is read once, in A's file order, into reused buffers (the next
key is read on a helper thread while this one is reduced); the sums are accumulated in float64 over
float64 chunks of `CHUNK` elements, so memory stays at a few buffers whatever the model size.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .arch import Arch, check_same_arch, detect
from .errors import AlloyError, Interrupted
from .io import open_source
from .paths import shown
from .plan import source_label

# float64 chunk length: small enough that a chunk's three float64 rows (1.5 MiB) stay in the CPU's
# cache between the conversion, the Gram product and the difference (≈ 2× faster than 4 Mi chunks).
CHUNK = 1 << 16
COMPONENTS = ("unet", "text_encoders", "vae", "other")


@dataclass
class Sums:
    """float64 sums over a group of keys: ⟨A,B⟩, ‖A‖², ‖B‖², ‖B−A‖² and the key count."""

    keys: int = 0
    ab: float = 0.0
    aa: float = 0.0
    bb: float = 0.0
    dd: float = 0.0

    def add(self, other: "Sums") -> None:
        self.keys += other.keys
        self.ab += other.ab
        self.aa += other.aa
        self.bb += other.bb
        self.dd += other.dd

    @property
    def cosine(self) -> float | None:
        if self.aa <= 0.0 or self.bb <= 0.0:
            return None
        return max(-1.0, min(1.0, self.ab / math.sqrt(self.aa * self.bb)))

    @property
    def rel_dist(self) -> float | None:
        if self.dd == 0.0:
            return 0.0 if self.keys else None
        return math.sqrt(self.dd) / math.sqrt(self.aa) if self.aa > 0.0 else None

    def as_dict(self) -> dict:
        return {"keys": self.keys, "cosine": self.cosine, "rel_dist": self.rel_dist}


@dataclass
class Comparison:
    """The result of `compare_files`; `to_dict()` is the `diff --json` output."""

    arch: Arch
    path_a: str
    path_b: str
    blocks: dict[str, Sums]
    components: dict[str, Sums]
    only_a: int = 0
    only_b: int = 0
    mismatched: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"arch": self.arch.name,
                "blocks": [{"block": b, **s.as_dict()} for b, s in self.blocks.items()],
                "components": {c: s.as_dict() for c, s in self.components.items() if s.keys}}

    def notes(self) -> list[str]:
        out = []
        if self.only_a or self.only_b:
            out.append(f"{self.only_a} keys are only in A and {self.only_b} only in B; they are not compared")
        if self.mismatched:
            out.append(f"{len(self.mismatched)} keys differ in shape and are not compared (first: "
                       f"{self.mismatched[0]})")
        return out


def component_of(arch: Arch, key: str) -> str:
    """"vae", "text_encoders", "unet" (the diffusion model / Flux transformer) or "other" (EMA …)."""
    if arch.is_vae(key):
        return "vae"
    if arch.is_text_encoder(key):
        return "text_encoders"
    if arch.canonical_key(key).startswith(arch.unet_prefix):
        return "unet"
    return "other"


def pair_sums(a: torch.Tensor, b: torch.Tensor, work: torch.Tensor | None = None) -> Sums:
    """The four sums of one key pair (any float dtypes, same number of elements), in float64.

    `work` (optional): a float64 scratch of ≥ 3·min(n, CHUNK) elements, reused between calls."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    n = fa.numel()
    step = min(n, CHUNK)
    if work is None or work.numel() < 3 * step:
        work = torch.empty(3 * max(step, 1), dtype=torch.float64)
    s = Sums(keys=1)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        m = hi - lo
        x = work[: 2 * m].view(2, m)
        x[0].copy_(fa[lo:hi])
        x[1].copy_(fb[lo:hi])
        (aa, ab), (_, bb) = torch.mm(x, x.T).tolist()      # one pass over both rows
        d = torch.sub(x[1], x[0], out=work[2 * m: 3 * m])
        s.aa += aa
        s.ab += ab
        s.bb += bb
        s.dd += float(torch.dot(d, d))
    return s


def _pairs(arch: Arch, src_a, src_b) -> tuple[list[tuple[str, str]], int, int, list[str]]:
    """(key in A, key in B) to compare — float in both, same shape, in A's order; a bare UNet /
    transformer key matches its prefixed spelling — plus the counts only in A / B and the keys
    whose shapes differ."""
    in_b = {arch.canonical_key(k): k for k in src_b.keys() if not arch.is_alias(k)}
    pairs, mismatched, matched = [], [], set()
    for ka in src_a.keys():
        kb = in_b.get(arch.canonical_key(ka))
        if kb is None or arch.is_alias(ka):
            continue
        matched.add(kb)
        ia, ib = src_a.info(ka), src_b.info(kb)
        if not (ia.dtype.is_floating_point and ib.dtype.is_floating_point):
            continue
        if tuple(ia.shape) != tuple(ib.shape):
            mismatched.append(ka)
            continue
        pairs.append((ka, kb))
    only_a = sum(1 for k in src_a.keys() if not arch.is_alias(k)) - len(matched)
    return pairs, only_a, len(in_b) - len(matched), mismatched


def _reader(src_a, src_b, pairs: list[tuple[str, str]]):
    """Yield (key, a, b) with the next pair read on a helper thread into the other buffer set."""
    size = max((max(src_a.info(ka).nbytes, src_b.info(kb).nbytes) for ka, kb in pairs), default=0)
    bufs = [(bytearray(size), bytearray(size)) for _ in range(2)]

    def read(i):
        ka, kb = pairs[i]
        return ka, src_a.read(ka, bufs[i % 2][0]), src_b.read(kb, bufs[i % 2][1])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-diff-read") as pool:
        pending = pool.submit(read, 0) if pairs else None
        for i in range(len(pairs)):
            item = pending.result()
            if i + 1 < len(pairs):
                pending = pool.submit(read, i + 1)
            yield item


def compare_sources(src_a, src_b, *, progress=None, should_stop=None) -> Comparison:
    """Compare two open sources (see the module docstring); AlloyError when their architectures differ."""
    t0 = time.perf_counter()
    archs = {source_label(s): detect(s.keys(), label=s.label) for s in (src_a, src_b)}
    check_same_arch(archs)
    arch = next(iter(archs.values()))
    keys, only_a, only_b, mismatched = _pairs(arch, src_a, src_b)
    if not keys:
        raise AlloyError(f"{shown(src_a.path)} and {shown(src_b.path)} share no float tensors of the same shape "
                         "to compare.")
    blocks = {b: Sums() for b in arch.block_ids}
    comps = {c: Sums() for c in COMPONENTS}
    work = torch.empty(3 * min(CHUNK, max(src_a.info(ka).nbytes for ka, _ in keys)), dtype=torch.float64)
    for i, (key, a, b) in enumerate(_reader(src_a, src_b, keys)):
        if should_stop is not None and should_stop():
            raise Interrupted("The comparison was stopped.")
        s = pair_sums(a, b, work)
        block = arch.block_of(key)
        if block is not None:
            blocks[block].add(s)
        comps[component_of(arch, key)].add(s)
        if progress is not None:
            progress(i + 1, len(keys), key)
    return Comparison(arch, src_a.path, src_b.path, blocks, comps, only_a, only_b, mismatched,
                      time.perf_counter() - t0)


def compare_files(path_a: str, path_b: str, *, progress=None, should_stop=None) -> Comparison:
    """Open both files (headers only), compare them, close them."""
    src_a = open_source(path_a, label="model A")
    try:
        src_b = open_source(path_b, label="model B")
    except BaseException:
        src_a.close()
        raise
    try:
        return compare_sources(src_a, src_b, progress=progress, should_stop=should_stop)
    finally:
        src_a.close()
        src_b.close()


def _fmt(v: float | None, digits: int = 6) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


COMPONENT_LABELS = {"unet": "UNet", "text_encoders": "text encoders", "vae": "VAE", "other": "other"}


def table_rows(cmp: Comparison) -> list[list[str]]:
    """[group, keys, cosine, rel_dist] rows: the blocks in order, then the components present."""
    rows = [[b, str(s.keys), _fmt(s.cosine), _fmt(s.rel_dist)] for b, s in cmp.blocks.items()]
    rows += [[COMPONENT_LABELS[c], str(s.keys), _fmt(s.cosine), _fmt(s.rel_dist)]
             for c, s in cmp.components.items() if s.keys]
    return rows


def format_text(cmp: Comparison) -> str:
    """The plain-text report of `diff` (one line per block, then per component)."""
    lines = [f"A: {shown(cmp.path_a)}", f"B: {shown(cmp.path_b)}", f"architecture: {cmp.arch.label}",
             f"{'block':<14}{'keys':>6}  {'cosine':>10}  {'rel_dist':>10}"]
    n_blocks = len(cmp.blocks)
    for i, (name, keys, cos, dist) in enumerate(table_rows(cmp)):
        if i == n_blocks:
            lines.append("component")
        lines.append(f"{name:<14}{keys:>6}  {cos:>10}  {dist:>10}")
    lines += [f"note: {n}" for n in cmp.notes()]
    lines.append(f"compared in {cmp.seconds:.1f} s")
    return "\n".join(lines)


def markdown_table(cmp: Comparison) -> str:
    """The same rows as a Markdown table (the tab shows it beside the plot)."""
    out = ["| block | keys | cosine | rel. distance |", "|---|---:|---:|---:|"]
    out += [f"| {' | '.join(r)} |" for r in table_rows(cmp)]
    return "\n".join(out)
