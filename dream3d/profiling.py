"""Measuring a training step: host-device synchronisations, operator calls and per-phase time.

A GPU step is fast only if the host never waits for the device inside it: every ``.item()``, ``bool(t)``,
``.tolist()``, ``.cpu()``, data-dependent shape (``nonzero``, boolean indexing) or blocking host-to-device
copy stops the host until the queue drains. These counters find them on a CPU, where no GPU is needed:

    with count_syncs() as syncs, count_ops() as ops:
        trainer.train_step()
    syncs.total, syncs.by_site, ops.total

On the CPU every tensor lives on the host, so :class:`count_syncs` tells device data from host data by where
it came from: tensors drawn from a ``torch.Generator`` on the host (cameras, timesteps, noise before they are
copied over), and whatever is computed from such tensors alone, are host data, and reading them is free. A
copy of host data to the device counts when it blocks (``non_blocking=False``). On CUDA,
``torch.cuda.set_sync_debug_mode`` reports the real ones (benchmarks/speed.py does both).

:class:`PhaseTimer` times named phases of a step; it synchronises the device at each phase boundary, so it is
on only for a breakdown run, never when steps/s is measured.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Tensor methods and functions whose result the host must wait for (a Python value or a data-dependent shape).
_READS = {
    "item",
    "tolist",
    "numpy",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "__complex__",
    "nonzero",
    "argwhere",
    "masked_select",
    "unique",
    "unique_consecutive",
    "equal",
    "allclose",
}
_HOST = "_dream3d_host"  # attribute marking a tensor as host data
# Factories that make a tensor on the host unless given a device (also on a GPU machine).
_FACTORIES = {
    "tensor",
    "as_tensor",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "linspace",
    "logspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
    "from_numpy",
}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _tensors(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (x for x in a if isinstance(x, torch.Tensor))


def _is_host(t: torch.Tensor) -> bool:
    return getattr(t, _HOST, False)


def _mark(out) -> None:
    for t in out if isinstance(out, (list, tuple)) else (out,):
        if isinstance(t, torch.Tensor):
            try:
                setattr(t, _HOST, True)
            except (AttributeError, RuntimeError):
                pass


def _bool_index(args) -> bool:
    idx = args[1] if len(args) > 1 else None
    parts = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class count_syncs(TorchFunctionMode):
    """Counts the calls that would make the host wait for the device; ``by_site`` names where they are."""

    def __init__(self, skip_files: tuple[str, ...] = ()):
        super().__init__()
        self.by_site: Counter[str] = Counter()
        self.skip_files = skip_files

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def _site(self, what: str) -> str:
        for fr in reversed(traceback.extract_stack(limit=40)[:-2]):
            if "/torch/" not in fr.filename and fr.filename != __file__:
                if any(s in fr.filename for s in self.skip_files):
                    return ""
                return f"{what} at {'/'.join(fr.filename.rsplit('/', 2)[-2:])}:{fr.lineno} ({fr.name})"
        return what

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        ts = list(_tensors(args, kwargs))
        host = bool(ts) and all(_is_host(t) for t in ts)
        sync = None
        if name in _READS and not host:
            sync = name
        elif name in ("__getitem__", "__setitem__", "index_put", "index_put_") and not host and _bool_index(args):
            sync = f"{name}[bool]"
        elif (
            name == "repeat_interleave"
            and not host
            and "output_size" not in kwargs
            and any(isinstance(a, torch.Tensor) for a in args[1:2])
        ):
            sync = name
        elif name == "where" and len(args) == 1 and not host:
            sync = "where(cond)"
        elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None and (not ts or host):
            sync = f"{name}(host data, device=...)"  # a blocking copy from the host, as .to(device) is
        elif name in ("to", "cuda", "copy_") and host and not kwargs.get("non_blocking", False):
            if name != "to" or any(
                isinstance(a, (torch.device, str)) or (isinstance(a, torch.Tensor) and a is not args[0])
                for a in list(args[1:]) + [kwargs.get("device")]
            ):
                sync = f"{name}(host->device)"
        if sync:
            site = self._site(sync)
            if site:
                self.by_site[site] += 1
        out = func(*args, **kwargs)
        if name in ("to", "cuda") and host and out is args[0]:
            out = out.view_as(
                out
            )  # on the CPU a "copy to the device" is the tensor itself: an alias stands for the copy
        if "generator" in kwargs and kwargs["generator"] is not None and kwargs["generator"].device.type == "cpu":
            _mark(out)  # drawn on the host
        elif name in _FACTORIES and not ts and kwargs.get("device") is None:
            _mark(out)  # made on the host
        elif host and name not in ("to", "cuda", "copy_"):
            _mark(out)  # computed from host data alone
        return out


class count_ops(TorchDispatchMode):
    """Counts ATen operator calls (each a kernel launch or more on a GPU), forward and backward."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.by_op[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


class PhaseTimer:
    """Wall time per named phase. Off (the default) it costs nothing and never synchronises."""

    def __init__(self, device: torch.device | str = "cpu", enabled: bool = False):
        self.device, self.enabled = torch.device(device), enabled
        self.seconds: Counter[str] = Counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, phase: str):
        if not self.enabled:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[phase] += time.perf_counter() - t0
