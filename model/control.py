"""ControlNet residuals on the DynamiCrafter UNet, added where the hosts' own SD UNet adds them.

A host ControlNet (an SD2.x ControlNet run on the noisy latent, frames as batch) hands the UNet a dict of lists
``{"input": [...], "middle": [...], "output": [...]}``. The hosts' UNet (``openaimodel.UNetModel.forward``) pops
them from the end:
- ``input``: after input block k, the k-th pop is added to the hidden state (which is then also the skip);
- ``middle``: one pop, added after the middle block;
- ``output``: before output block k, the k-th pop is added to the skip it takes, i.e. to the skip of input block
  ``n - 1 - k`` (``n`` input blocks). A full SD ControlNet gives one ``output`` entry per input block, in input
  order, so entry ``i`` joins the skip of input block ``i``.
Entries may be None (nothing added there). DynamiCrafter's spatial layout is SD2.1's (same blocks, channels and
resolutions; the skip of block 0 is taken after ``init_attn``), and its rows are ``(b t)`` like the hosts', so every
frame gets its own residual: a ControlNet's hint can differ per frame.

Where the hosts log a warning and skip a residual whose shape does not fit, this refuses in one line: a ControlNet
that silently does nothing is the failure this module exists to prevent.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence

import torch

from .errors import DynamiCrafterInputError

KINDS = ("input", "middle", "output")
_SHAPE_TODO = "use a ControlNet made for SD2.x models, and a hint at the video's size"


@dataclasses.dataclass
class ControlResiduals:
    """Residuals by the place they are added: ``input[i]`` after input block i (hidden state and skip), ``middle``
    after the middle block, ``output[i]`` to the skip of input block i when the decoder takes it."""

    input: List[Optional[torch.Tensor]]
    middle: Optional[torch.Tensor]
    output: List[Optional[torch.Tensor]]

    def empty(self) -> bool:
        return self.middle is None and all(r is None for r in self.input) and all(r is None for r in self.output)


def _refuse(found: str, todo: str = "use a ControlNet made for SD2.x (SD2.1-layout UNet, 1024-dim text) models"):
    raise DynamiCrafterInputError("control", "ControlNet residuals for the DynamiCrafter UNet (SD2.1 layout)",
                                  found, todo)


def from_host(control: Optional[Mapping[str, Any]], n_blocks: int) -> Optional[ControlResiduals]:
    """The hosts' ``control`` dict (lists popped from the end) -> residuals by block index; None when empty.

    The dict's lists are not modified (the hosts pop them; a wrapper may call the UNet more than once)."""
    if not control:
        return None
    if not isinstance(control, Mapping):
        _refuse(f"a {type(control).__name__}")
    unknown = sorted(set(control) - set(KINDS))
    if unknown:
        _refuse(f"unknown control kinds {unknown}")
    lists = {}
    for kind in KINDS:
        items = control.get(kind) or []
        if not isinstance(items, (list, tuple)):
            _refuse(f"control['{kind}'] is a {type(items).__name__}, not a list")
        lists[kind] = list(items)
    for kind in ("input", "output"):
        if len(lists[kind]) > n_blocks:
            _refuse(f"{len(lists[kind])} '{kind}' residuals for {n_blocks} input blocks")
    # k-th pop = items[-1-k]
    inp: List[Optional[torch.Tensor]] = [None] * n_blocks
    for k, r in enumerate(reversed(lists["input"])):
        inp[k] = r
    out: List[Optional[torch.Tensor]] = [None] * n_blocks
    for k, r in enumerate(reversed(lists["output"])):
        out[n_blocks - 1 - k] = r
    middle = lists["middle"][-1] if lists["middle"] else None
    res = ControlResiduals(inp, middle, out)
    return None if res.empty() else res


def add_residual(h: torch.Tensor, r: Optional[torch.Tensor], where: str) -> torch.Tensor:
    """``h + r`` for a hidden state ``h`` [(b t), C, H, W] and a residual ``r`` [rows, C, H, W]; ``rows`` is
    ``(b t)`` (one per frame of every batch entry) or divides it (repeated batch-major). Any other shape is
    refused naming ``where``; out of place, in ``h``'s dtype and device."""
    if r is None:
        return h
    if not isinstance(r, torch.Tensor):
        _refuse(f"{where}: a {type(r).__name__}, not a tensor")
    if not _fits(r, h.shape):
        _refuse(f"{where}: residual {list(r.shape)} for the hidden state {list(h.shape)}",
                _SHAPE_TODO)
    r = r.to(device=h.device, dtype=h.dtype)
    if r.shape[0] != h.shape[0]:
        r = r.repeat(h.shape[0] // r.shape[0], *([1] * (r.dim() - 1)))
    return h + r


def _fits(r: Optional[torch.Tensor], shape: Sequence[int]) -> bool:
    """A residual adds to a hidden state of ``shape``: same [C, H, W] and rows that divide the state's rows."""
    return r is None or (tuple(r.shape[1:]) == tuple(shape[1:]) and r.shape[0] > 0 and shape[0] % r.shape[0] == 0)


def check_shapes(res: ControlResiduals, skip_shapes: Sequence[Sequence[int]], middle_shape: Sequence[int]) -> None:
    """Refuse residuals that cannot be added to a UNet whose skips / middle output have these shapes, for a caller
    that knows the shapes before any block runs (the UNet itself refuses in ``add_residual``)."""
    for kind, lst in (("input", res.input), ("output", res.output)):
        for i, (r, shape) in enumerate(zip(lst, skip_shapes)):
            if not _fits(r, shape):
                _refuse(f"{kind} residual for block {i}: {list(r.shape)}, hidden state {list(shape)}",
                        _SHAPE_TODO)
    if not _fits(res.middle, middle_shape):
        _refuse(f"middle residual {list(res.middle.shape)}, hidden state {list(middle_shape)}",
                _SHAPE_TODO)
