"""The one place that loads the CUDA libraries behind the renderers' fast paths.

gsplat (Gaussians), nerfacc (volume ray marching) and nvdiffrast (meshes) are Python packages whose CUDA
code compiles on first use (minutes, and it needs nvcc). :func:`load` imports, builds and loads one of
them at most once per process and caches the outcome, success or the error. The renderers ask:

- :func:`available` for ``backend="auto"``: True on a CUDA device where the library loaded. A library that
  fails sends its renderer to the torch path, and one warning line (once per library per process) says
  which library failed, why, and how to fix it.
- :func:`require` for a backend forced by name: a RuntimeError naming the library, why and the fix.

Whether a library *imports* (its pure-Python parts, which need no CUDA: nerfacc's dense compositing
helpers run on the CPU) is another question: :func:`import_error`.

This module never imports dream3d.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
import warnings
from dataclasses import dataclass

import torch

LIBRARIES = ("gsplat", "nerfacc", "nvdiffrast")
RENDERER_OF = {"gsplat": "gaussians", "nerfacc": "volume", "nvdiffrast": "mesh"}
_MODULE_OF = {"gsplat": "gsplat", "nerfacc": "nerfacc", "nvdiffrast": "nvdiffrast.torch"}


class BackendWarning(RuntimeWarning):
    """A CUDA library could not be loaded, so its renderer takes the torch path."""


class NoCudaToolkit(RuntimeError):
    """The library imported but found no nvcc to compile its kernels (gsplat and nerfacc then leave _C None)."""


@dataclass(frozen=True)
class Load:
    """The outcome of loading one library in this process."""

    library: str
    ok: bool
    seconds: float  # import + build + load
    error: str = ""  # the exception's type and first line when not ok
    fix: str = ""  # what to do about it when not ok
    detail: str = ""  # the whole message (torch puts the compiler's output there), its last 4000 characters


_LOADS: dict[str, Load] = {}
_WARNED: set[str] = set()
_NV_CONTEXTS: dict = {}


def _short(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = f"{type(e).__name__}: {lines[0].rstrip('. ')}" if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _fix(library: str, e: BaseException) -> str:
    top = _MODULE_OF[library].split(".")[0]
    if isinstance(e, ImportError) and (e.name or "").split(".")[0] == top:
        return f"pip install 'dream3d[cuda]' (it brings {library})"
    cuda = torch.version.cuda
    if cuda is None:
        return f"this torch ({torch.__version__}) is a CPU build: install a CUDA build of torch"
    if isinstance(e, NoCudaToolkit) or "CUDA_HOME" in str(e):
        return f"install the CUDA toolkit with nvcc for torch's CUDA {cuda} and put it on PATH (or set CUDA_HOME)"
    arch = "e.g. 9.0 for an H100"
    try:
        if torch.cuda.is_available():
            arch = "%d.%d for this GPU" % torch.cuda.get_device_capability()
    except Exception:  # only a hint; never fail while explaining a failure
        pass
    return (
        f"use an nvcc that matches torch's CUDA {cuda}, set TORCH_CUDA_ARCH_LIST ({arch}), "
        f"then `dream3d env --build` rebuilds it and shows the compiler's errors"
    )


# --------------------------------------------------------------------------------------------------
# Loaders: each raises when its library cannot be imported, built or loaded.


def _load_gsplat(device: torch.device) -> None:
    import gsplat  # noqa: F401
    from gsplat.cuda._backend import _C  # the JIT build runs here; a failed build raises

    if _C is None:
        raise NoCudaToolkit("gsplat found no CUDA toolkit (nvcc) to compile its kernels")


def _load_nerfacc(device: torch.device) -> None:
    import nerfacc  # noqa: F401
    from nerfacc.cuda._backend import _C

    if _C is None:
        raise NoCudaToolkit("nerfacc found no CUDA toolkit (nvcc) to compile its kernels")


def nvdiffrast_plugin_dir() -> str:
    """The folder torch builds nvdiffrast's CUDA plugin in: ``$TORCH_EXTENSIONS_DIR/<plugin name>/``.

    nvdiffrast's ``ops._get_plugin()`` builds the plugin with ``torch.utils.cpp_extension.load``, drops the
    module that ``load`` returns and imports the plugin again by name (``importlib.import_module``). That
    worked while extension modules were single-phase-init: loading one registered it in ``sys.modules``.
    The pybind11 3 headers that recent torch ships make multi-phase-init modules, which torch's loader
    (``spec.loader.exec_module``) does not register, so the import by name finds nothing unless this
    folder is on ``sys.path``. The name is the one ops.py gives the plugin.
    """
    import nvdiffrast
    from torch.utils import cpp_extension

    name = re.sub(r"\W|^(?=\d)", "_", f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}")
    return cpp_extension._get_build_directory(name, False)


def _new_nvdiffrast_context(device: torch.device):
    import nvdiffrast.torch as dr

    folder = nvdiffrast_plugin_dir()
    if folder not in sys.path:
        sys.path.append(folder)  # appended: it only holds the plugin, and must shadow nothing
    return dr.RasterizeCudaContext(device=device)  # builds and loads the plugin on first use


def _load_nvdiffrast(device: torch.device) -> None:
    _NV_CONTEXTS[device] = _new_nvdiffrast_context(device)


_LOADERS = {"gsplat": _load_gsplat, "nerfacc": _load_nerfacc, "nvdiffrast": _load_nvdiffrast}


# --------------------------------------------------------------------------------------------------
# What the renderers call


def load(library: str, device: torch.device | str | None = None) -> Load:
    """Import, build and load ``library`` once per process (later calls return the cached outcome).

    ``device`` matters to nvdiffrast only, whose load creates the rasterizer context of that device
    (default: the current CUDA device).
    """
    if library not in _LOADERS:
        raise ValueError(f"unknown CUDA library {library!r}; choose one of {', '.join(LIBRARIES)}")
    if library not in _LOADS:
        dev = torch.device("cuda" if device is None else device)
        start = time.perf_counter()
        try:
            _LOADERS[library](dev)
        except Exception as e:  # a failed build raises RuntimeError, OSError, CalledProcessError, ImportError...
            _LOADS[library] = Load(
                library, False, time.perf_counter() - start, _short(e), _fix(library, e), str(e)[-4000:]
            )
        else:
            _LOADS[library] = Load(library, True, time.perf_counter() - start)
    return _LOADS[library]


def loaded(library: str) -> Load | None:
    """The cached outcome of :func:`load`, or None when this process has not tried yet (nothing is built)."""
    return _LOADS.get(library)


def available(library: str, device: torch.device | str) -> bool:
    """For ``backend="auto"``: whether ``library`` can run on ``device``, i.e. a CUDA device where it loads.

    The first failure of each library prints one warning line: which library, why, and the fix.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return False
    result = load(library, device)
    if not result.ok and library not in _WARNED:
        _WARNED.add(library)
        warnings.warn(
            f"{library} could not be loaded, so the {RENDERER_OF[library]} renderer takes its torch path "
            f"(slower): {result.error}. Fix: {result.fix}; or set the backend to 'torch' to skip {library}.",
            BackendWarning,
            stacklevel=2,
        )
    return result.ok


def require(library: str, device: torch.device | str) -> None:
    """For a backend forced by name: load ``library`` on ``device`` or raise a RuntimeError that says why."""
    device = torch.device(device)
    if device.type != "cuda":
        raise RuntimeError(
            f"backend={library!r} runs on CUDA devices only (the tensors are on {device}); use backend='torch'"
        )
    result = load(library, device)
    if not result.ok:
        raise RuntimeError(
            f"backend={library!r} was asked for, but {library} could not be loaded: {result.error}. "
            f"Fix: {result.fix}; or use backend='torch'."
        )


def nvdiffrast_context(device: torch.device | str):
    """nvdiffrast's ``RasterizeCudaContext`` for ``device``, one per device per process."""
    device = torch.device(device)
    require("nvdiffrast", device)
    if device not in _NV_CONTEXTS:
        _NV_CONTEXTS[device] = _new_nvdiffrast_context(device)
    return _NV_CONTEXTS[device]


def import_error(library: str) -> str:
    """'' when ``library``'s Python package imports (no CUDA needed for that), else the exception's short text."""
    try:
        importlib.import_module(_MODULE_OF[library])
    except Exception as e:
        return _short(e)
    return ""


def explain(library: str, device: torch.device | str) -> tuple[str, str]:
    """The backend ``auto`` takes for ``library``'s renderer on ``device``, and why, building nothing."""
    device = torch.device(device)
    broken = import_error(library)
    if device.type != "cuda":
        why = f"{device.type} device: {library} runs on CUDA only"
        return "torch", why + (f" (and it does not import here: {broken})" if broken else "")
    if broken:
        return "torch", f"{library} does not import: {broken}"
    result = loaded(library)
    if result is None:
        return library, (
            f"CUDA device and {library} imports; its CUDA code is built and loaded on first use "
            f"(`dream3d env --build` does that now and checks it)"
        )
    if result.ok:
        return library, f"CUDA device; {library} built and loaded in {result.seconds:.1f} s"
    return "torch", f"{library} could not be loaded: {result.error}. Fix: {result.fix}"
