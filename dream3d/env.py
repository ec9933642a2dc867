"""``dream3d env``: what this machine offers dream3d, for bug reports and GPU set-up (like ``diffusers-cli env``).

It reports versions, the device, and the backend each renderer's ``auto`` takes on that device, and why.
With ``build`` it also builds and loads each CUDA library (through ``renderers.backends``, as a run would)
and checks it against its torch reference on a tiny scene. The parity functions are importable: the CUDA
tests call them too.

Nothing here imports diffusers or the CUDA libraries unless asked: ``env`` must work on the broken
installs it is meant to diagnose.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

import torch

from renderers import backends
from renderers.cameras import orbit_cameras
from renderers.gaussians import rasterize_gaussians
from renderers.mesh import rasterize_mesh
from renderers.volume import make_occupancy_grid, render_rays

from . import __version__
from .devices import resolve_device

# what to report: name -> the distributions that provide it (nvdiffrast comes as diffrp-nvdiffrast here)
PACKAGES = {
    "diffusers": ("diffusers",),
    "transformers": ("transformers",),
    "peft": ("peft",),
    "gsplat": ("gsplat",),
    "nerfacc": ("nerfacc",),
    "nvdiffrast": ("diffrp-nvdiffrast", "nvdiffrast"),
}


@dataclass
class Parity:
    """A CUDA library's output against its torch reference on one tiny scene."""

    library: str
    passed: bool
    max_error: float
    tolerance: float
    seconds: float  # the check itself; building and loading are timed by renderers.backends.load
    scene: str


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def gsplat_parity(device: torch.device | str = "cuda") -> Parity:
    """gsplat against the torch tile compositor: max |difference| of colour and opacity."""

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    n = 64
    means = 0.6 * (torch.rand(n, 3, generator=g) - 0.5)
    quats = torch.randn(n, 4, generator=g)
    scales = 0.03 + 0.09 * torch.rand(n, 3, generator=g)
    opacities = 0.1 + 0.8 * torch.rand(n, generator=g)  # below both alpha clamps (torch 0.99, gsplat 0.999)
    colors = torch.rand(n, 3, generator=g)
    scene = [t.to(device) for t in (means, quats, scales, opacities, colors)]
    cams = orbit_cameras(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 120.0]), 2.0, 49.0, 48, 40).to(device=device)
    bg = torch.tensor([0.2, 0.3, 0.4], device=device)
    start = time.perf_counter()
    ref = rasterize_gaussians(*scene, cams, bg, backend="torch")
    out = rasterize_gaussians(*scene, cams, bg, backend="gsplat")
    err = max(_max_abs(out.rgb, ref.rgb), _max_abs(out.alpha, ref.alpha))
    # 1e-2: the backends may differ at a pixel where an alpha sits at the 1/255 cut-off; wrong kernels differ by ~0.1+
    return Parity("gsplat", err <= 1e-2, err, 1e-2, time.perf_counter() - start, f"{n} Gaussians, 2 views of 48x40")


def _blob(points: torch.Tensor, dirs: torch.Tensor):
    """A smooth coloured blob, exactly empty beyond radius 0.6 (inside the occupancy grid's cube)."""
    r2 = (points * points).sum(-1)
    sigma = 30.0 * (1 - r2 / 0.36).clamp_min(0) ** 2
    phase = torch.tensor([0.0, 2.0, 4.0], device=points.device, dtype=points.dtype)
    return sigma, 0.5 + 0.5 * torch.sin(3.0 * points + phase)


def nerfacc_parity(device: torch.device | str = "cuda") -> Parity:
    """nerfacc's occupancy-grid path against the dense torch path with the same samples: max |difference|
    of colour, opacity and (where opaque) depth.

    Every ray spans [1.5, 4.5] with 192 samples, so the marcher's step 3/192 = 1/64 from 1.5 falls exactly on
    the dense bins (multiples of 1/64 are exact in float32); a fresh grid is all occupied; no early stop and
    no alpha threshold. Only float rounding separates the two.
    """

    device = torch.device(device)
    cams = orbit_cameras(15.0, torch.tensor([0.0, 90.0]), 3.0, 45.0, 24, 24).to(device=device)
    o, d = (x.reshape(-1, 3) for x in cams.rays())
    S, near, far = 192, 1.5, 4.5
    kw = dict(background=torch.tensor([0.2, 0.4, 0.6], device=device), stratified=False, early_stop_eps=0.0)
    start = time.perf_counter()
    ref = render_rays(_blob, o, d, near, far, S, backend="torch", **kw)
    grid = make_occupancy_grid(1.0, resolution=32, device=device)
    out = render_rays(_blob, o, d, near, far, S, backend="nerfacc", estimator=grid, alpha_thre=0.0, **kw)
    hit = ref.alpha[:, 0] > 0.5
    err = max(_max_abs(out.rgb, ref.rgb), _max_abs(out.alpha, ref.alpha), _max_abs(out.depth[hit], ref.depth[hit]))
    return Parity(
        "nerfacc", err <= 1e-3, err, 1e-3, time.perf_counter() - start, f"{o.shape[0]} rays x {S} matched samples"
    )


def nvdiffrast_parity(device: torch.device | str = "cuda") -> Parity:
    """nvdiffrast against the torch rasterizer: face ids must agree on 99 % of pixels (edges may break ties
    apart), and the max |difference| of depth and barycentrics where they agree is the error."""
    import trimesh

    device = torch.device(device)
    m = trimesh.creation.icosphere(2)
    v = torch.tensor(m.vertices, dtype=torch.float32, device=device)
    f = torch.tensor(m.faces, dtype=torch.long, device=device)
    cams = orbit_cameras(30.0, torch.tensor([0.0, 100.0, 200.0]), 2.5, 45.0, 64, 64).to(device=device)
    start = time.perf_counter()
    ref = rasterize_mesh(v, f, cams, backend="torch")
    out = rasterize_mesh(v, f, cams, backend="nvdiffrast")
    same = out.face_id == ref.face_id
    both = same & ref.mask
    err = max(_max_abs(out.depth[both], ref.depth[both]), _max_abs(out.bary[both], ref.bary[both]))
    agree = float(same.float().mean())
    return Parity(
        "nvdiffrast",
        agree >= 0.99 and err <= 1e-3,
        err,
        1e-3,
        time.perf_counter() - start,
        f"icosphere of {len(m.faces)} faces, 3 views of 64x64; face ids agree on {100 * agree:.1f} % of pixels",
    )


PARITY = {"gsplat": gsplat_parity, "nerfacc": nerfacc_parity, "nvdiffrast": nvdiffrast_parity}


def package_version(name: str) -> str | None:
    """The installed version of ``name`` (see PACKAGES), with the distribution when it is not the name."""
    for dist in PACKAGES[name]:
        try:
            v = version(dist)
        except PackageNotFoundError:
            continue
        return v if dist == name else f"{v} ({dist})"
    return None


def toolchain() -> dict:
    """What a CUDA extension build uses: nvcc and its version, CUDA_HOME, the architectures, the build folder."""
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
    )
    release = None
    if nvcc and os.path.exists(nvcc):
        try:
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
            release = next(
                (line.split("release", 1)[1].strip() for line in out.splitlines() if "release" in line), None
            )
        except (OSError, subprocess.SubprocessError):
            pass
    return {
        "nvcc": f"{nvcc} ({release})" if release else nvcc,
        "CUDA_HOME": os.environ.get("CUDA_HOME"),
        "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST"),
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR"),
    }


def build_and_check(device: torch.device, log=None) -> list[dict]:
    """Build and load each CUDA library on ``device`` and run its parity check: one dict per library."""
    rows = []
    for lib, check in PARITY.items():
        if device.type != "cuda":
            why = "no CUDA device" if not torch.cuda.is_available() else f"the device is {device} (try --device cuda)"
            rows.append({"library": lib, "status": "skipped", "why": why})
            continue
        if log:
            log(f"building and loading {lib} (the first build takes minutes) ...")
        loaded = backends.load(lib, device)
        row = {"library": lib, "load_seconds": round(loaded.seconds, 2)}
        if not loaded.ok:
            row.update(status="fail", why=f"could not be loaded: {loaded.error}", fix=loaded.fix, detail=loaded.detail)
        else:
            try:
                p = check(device)
            except Exception as e:  # a kernel built for another GPU fails here ("no kernel image is available")
                row.update(
                    status="fail",
                    why=f"its parity check raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                )
            else:
                row.update(
                    status="pass" if p.passed else "fail",
                    **{k: v for k, v in asdict(p).items() if k not in ("library", "passed")},
                )
        rows.append(row)
    return rows


def collect(device: str = "auto", build: bool = False, log=None) -> dict:
    """Everything ``dream3d env`` prints, as a JSON-ready dict."""
    dev = resolve_device(device, "--device")
    info = {
        "dream3d": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(dev),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(total / 2**30, 1),
            "free_gib": round(free / 2**30, 1),
        }
    info["packages"] = {name: package_version(name) for name in PACKAGES}
    info["toolchain"] = toolchain()
    if build:
        info["build"] = build_and_check(dev, log)  # before the backends, so that they report what loaded
    info["renderers"] = {}
    for lib in backends.LIBRARIES:
        choice, why = backends.explain(lib, dev)
        if lib == "nerfacc" and choice == "nerfacc":
            why += "; it marches NeRFs through the occupancy grid (nerf.occupancy_grid), other volumes take torch"
        info["renderers"][backends.RENDERER_OF[lib]] = {"backend": choice, "why": why}
    return info


def format_report(info: dict) -> str:
    """The text ``dream3d env`` prints: one "- key: value" line each, ready to paste into an issue."""
    cuda = info["torch_cuda"] or "none, a CPU build"
    lines = [
        f"- dream3d: {info['dream3d']}",
        f"- Python: {info['python']}",
        f"- platform: {info['platform']}",
        f"- torch: {info['torch']} (CUDA {cuda})",
        f"- CUDA available: {'yes' if info['cuda_available'] else 'no'}",
        f"- device: {info['device']}",
    ]
    if "gpu" in info:
        g = info["gpu"]
        lines.append(
            f"- GPU: {g['name']} (compute capability {g['capability']}), {g['memory_gib']} GiB, {g['free_gib']} GiB free"
        )
    lines += [f"- {name}: {v or 'not installed'}" for name, v in info["packages"].items()]
    lines += [
        f"- {name}: {v or ('not found' if name == 'nvcc' else 'not set')}" for name, v in info["toolchain"].items()
    ]
    lines.append(f"- renderer backends on {info['device']}:")
    lines += [f"  - {r}: {c['backend']} ({c['why']})" for r, c in info["renderers"].items()]
    if "build" in info:
        lines.append("- CUDA builds and parity checks against torch:")
        for row in info["build"]:
            text = f"  - {row['library']}: {row['status']}"
            if "max_error" in row:
                text += (
                    f", max |difference| {row['max_error']:.2e} (tolerance {row['tolerance']:.0e}) on {row['scene']}; "
                    f"build + load {row['load_seconds']:.1f} s, check {row['seconds']:.2f} s"
                )
            else:
                text += f" ({row['why']})"
                if "fix" in row:
                    text += f"; fix: {row['fix']}"
                if "load_seconds" in row:
                    text += f"; build + load {row['load_seconds']:.1f} s"
            lines.append(text)
            if row.get("detail", "").count("\n"):  # a build's log: the compiler's errors are in it
                lines += ["      " + s for s in row["detail"].splitlines()]
    return "\n".join(lines)
