"""Where each checkpoint key lives in a loaded model (`Target`), and reading/writing it.

A host (merger/webui.py, merger/forge.py) hands the live machinery (merger/live.py) a map
checkpoint key → Target. A Target names the live tensor(s) by (module, attribute), looked up at
every use because WebUI memory managers and LoRA loaders swap Parameters, and says how the
checkpoint's tensor becomes them:

  - one slot, same layout: the common case (A1111's module tree; Forge's UNet, VAE, CLIP-L);
  - several slots: the file tensor is their row-wise concatenation (open_clip's fused
    `attn.in_proj_*` is Hugging Face's q_proj, k_proj, v_proj);
  - `transpose`: the live tensor is the file tensor transposed (open_clip `text_projection` is
    HF `text_projection.weight`);
  - `via`: the WebUI's loader rounds the file tensor through this dtype before the live one
    (Forge keeps CLIP token/position embeddings in fp32 after loading them as fp16; A1111 casts
    fp8 weights from the half model);
  - `refuse`: a sentence why the tensor cannot be written (quantised storage), else None."""
from __future__ import annotations

from dataclasses import dataclass

import torch

CONVERSIONS = ("cast", "via_fp16")
_VIA = {"cast": None, "via_fp16": torch.float16}


@dataclass(frozen=True, eq=False)
class Target:
    slots: tuple[tuple[torch.nn.Module, str], ...]
    transpose: bool = False
    via: torch.dtype | None = None
    refuse: str | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The live tensors now (one per slot)."""
        return [getattr(m, a) for m, a in self.slots]

    @property
    def shape(self) -> tuple:
        """The tensor's shape in the checkpoint's layout."""
        ts = self.tensors()
        if len(ts) > 1:
            return (sum(int(t.shape[0]) for t in ts), *ts[0].shape[1:])
        shape = tuple(ts[0].shape)
        return shape[::-1] if self.transpose else shape


def single(module: torch.nn.Module, attr: str, via: torch.dtype | None = None) -> Target:
    return Target(((module, attr),), via=via)


# ---- a module tree's own names --------------------------------------------------------------
def checkpoint_name(name: str) -> str:
    """The checkpoint key of module path `name`: WebUIs wrap the text encoder and its token
    embedding in modules that hold the original as `.wrapped` (A1111's hijack:
    `cond_stage_model.wrapped.transformer…token_embedding.wrapped.weight` is checkpoint key
    `cond_stage_model.transformer…token_embedding.weight`; Forge's textual-inversion wrapper), so
    every `wrapped` segment is dropped."""
    return ".".join(part for part in name.split(".") if part != "wrapped")


def owner_map(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """name → (module, attribute) for every parameter and persistent buffer (what load_state_dict
    loads; tied ones under each name; names inside `wrapped` hijack modules under their
    checkpoint name too, see checkpoint_name)."""
    out, aliases = {}, {}
    for mname, module in model.named_modules(remove_duplicate=False):
        prefix = mname + "." if mname else ""
        skip = getattr(module, "_non_persistent_buffers_set", ())
        for table in (module._parameters, module._buffers):
            for attr, t in table.items():
                if t is not None and not (table is module._buffers and attr in skip):
                    out[prefix + attr] = (module, attr)
                    aliases.setdefault(checkpoint_name(prefix + attr), (module, attr))
    for key, owner in aliases.items():
        out.setdefault(key, owner)
    return out


# ---- conversions ------------------------------------------------------------------------------
def bitwise_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaNs compare by bit pattern)."""
    if x.dtype != y.dtype or tuple(x.shape) != tuple(y.shape):
        return False
    if x.numel() == 0:
        return True
    y = y.to(x.device)
    return torch.equal(_bits(x.contiguous().reshape(-1)), _bits(y.contiguous().reshape(-1)))


CHECK_CHUNK = 1 << 20    # elements per piece of a file → live conversion (a buffer that stays in L2)


def _pieces(live: torch.Tensor, a: torch.Tensor):
    """Aligned flat pieces (live, a) of two contiguous tensors of one shape, or None when they are
    not such a pair. The capture's check and every write convert the same pieces, so both take the
    same path through torch's conversion (its vectorised and scalar loops give NaN different bits)."""
    if (tuple(live.shape) != tuple(a.shape) or not (live.is_contiguous() and a.is_contiguous())
            or live.device.type == "meta" or live.dtype.is_complex or live.numel() == 0):
        return None
    lf, af = live.reshape(-1), a.reshape(-1)
    n = lf.numel()
    step = CHECK_CHUNK if live.device.type == "cpu" else 1 << 24
    return [(lf[s:s + step], af[s:s + step]) for s in range(0, n, step)]


def _rounds(via, a: torch.Tensor, dtype: torch.dtype) -> bool:
    """True when file tensor `a` is rounded through `via` before it becomes `dtype`."""
    return via is not None and via != dtype and a.is_floating_point() and dtype.is_floating_point


def reproduces(live: torch.Tensor, a: torch.Tensor, via: torch.dtype | None) -> bool:
    """`convert(a, via, live.dtype, live.device)` equals `live` bit for bit, found piece by piece
    through one reused buffer (no converted copy of the whole tensor, which costs a fresh
    allocation and a pass over memory per key at the first merge)."""
    pieces = _pieces(live, a)
    if pieces is None:
        return bitwise_equal(live, convert(a, via, live.dtype, live.device))
    buf = torch.empty(pieces[0][0].numel(), dtype=live.dtype, device=live.device)
    rounds = _rounds(via, a, live.dtype)
    for lp, ap in pieces:
        b = buf[:lp.numel()]
        b.copy_(ap.to(dtype=via) if rounds else ap)
        if not torch.equal(_bits(b), _bits(lp)):
            return False
    return True


_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns as integers of its element size (torch.equal over bytes is 4× slower)."""
    return t.view(_INTS[t.element_size()]) if t.element_size() in _INTS and t.dtype != torch.bool else t


def convert(a: torch.Tensor, via: torch.dtype | None, dtype: torch.dtype, device) -> torch.Tensor:
    """File tensor → live representation: a.to(dtype), rounded through `via` first when given."""
    if _rounds(via, a, dtype):
        a = a.to(device=device, dtype=via)
    return a.to(device=device, dtype=dtype)


def parts(t: Target, x: torch.Tensor) -> list[torch.Tensor]:
    """File-layout tensor `x` as one tensor per slot (rows split, transposed)."""
    if t.transpose:
        x = x.t()
    if len(t.slots) == 1:
        return [x]
    return list(torch.split(x, [int(live.shape[0]) for live in t.tensors()], dim=0))


def direct(t: Target) -> torch.Tensor | None:
    """The live tensor itself when a result may be computed straight into it (one slot in the
    file's layout, no rounding step, contiguous, in memory), else None."""
    if len(t.slots) != 1 or t.transpose:
        return None
    live = t.tensors()[0]
    if (t.via is not None and t.via != live.dtype) or not live.is_contiguous() or live.device.type == "meta":
        return None
    return live.data


def write(t: Target, x: torch.Tensor, via: torch.dtype | None = None) -> None:
    """Put file-layout tensor `x` into the live tensors (rounded through `via` when given), as
    `convert` does but with the last conversion done by `copy_` itself (the same cast, no
    temporary of the live tensor's size), in the pieces `reproduces` compared. Callers hold
    no_grad / inference_mode (the host's writing() context)."""
    for live, p in zip(t.tensors(), parts(t, x)):
        if p is live or p.data_ptr() == live.data_ptr():
            continue
        rounds = _rounds(via, p, live.dtype)
        pieces = _pieces(live.data, p)
        for lp, ap in pieces if pieces is not None else [(live.data, p)]:
            lp.copy_(ap.to(dtype=via) if rounds else ap)


def put_back(t: Target, kept: tuple) -> None:
    """Restore raw copies taken by `keep`."""
    for live, k in zip(t.tensors(), kept):
        live.data.copy_(k)


def keep(t: Target) -> tuple:
    """CPU copies of the live tensors (for an exact restore when no file reproduces them)."""
    return tuple(live.detach().to("cpu", copy=True) for live in t.tensors())


def matching_via(t: Target, a: torch.Tensor | None):
    """(True, via) when file tensor `a` converted through `via` (None = plain cast) equals the
    live tensors bit for bit — the target's own conversion first — else (False, None)."""
    if a is None or tuple(a.shape) != t.shape:
        return False, None
    lives = t.tensors()
    for via in dict.fromkeys((t.via, None, torch.float16)):
        if via is not None and (not a.is_floating_point() or all(live.dtype == via for live in lives)):
            continue
        try:
            if all(reproduces(live, p, via) for live, p in zip(lives, parts(t, a))):
                return True, via
        except (RuntimeError, TypeError):
            continue
    return False, None


def reproducing_conversion(a: torch.Tensor | None, live: torch.Tensor) -> str | None:
    """The conversion name ("cast", "via_fp16") of file tensor `a` that equals `live` bitwise, or None."""
    holder = torch.nn.Module()
    holder.register_buffer("x", live)
    ok, via = matching_via(single(holder, "x"), a)
    if not ok:
        return None
    return next(name for name, v in _VIA.items() if v == via)
