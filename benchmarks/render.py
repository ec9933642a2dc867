"""Renderer speed: forward + backward time per backend, scene size and resolution.

    OMP_NUM_THREADS=1 python benchmarks/render.py                        # everything, writes the json
    python benchmarks/render.py --gaussians 5000 20000 --sizes 64 128 --json out.json
    python benchmarks/render.py --only gaussians --gaussians 7000 --batch 4 --tile-sizes 16 8 4 --json /tmp/tiles.json

One function per renderer returns rows (dicts); ``main`` prints them as a table and writes them all to
one json file (atomically). Each timed step renders a batch of cameras and backpropagates a loss over
colour, alpha and depth, like one optimisation step.

Gaussians: the scene imitates a DreamGaussian start: N Gaussians uniform in a ball of radius 0.5, sizes
about the mean spacing of N points, opacities in [0.1, 0.9], seen from 2.5 units with a 49 degree field
of view. Backends: "torch" (the tile compositor), "gsplat" (CUDA only), and "dense" (the brute-force
reference, only where its B*H*W*N pairs fit under ``--dense-max-pairs``); the dense rows report how many
times slower they are than the tile compositor on the same scene.

Volume: a default-sized ``NeRFModel`` (16-level hash grid, 2^19 entries) at initialisation (the density
blob), rendered through ``renderers.volume.render_volume`` with ``--samples`` per ray at
``--volume-sizes``. Rows are named "vol/<shading>": "albe" shades by albedo only; "lamb" adds the
finite-difference normals (6 more density queries per sample) that lambertian/textureless shading needs.
Backends: "torch" (dense sampling) and, on CUDA with nerfacc, "nerfacc" (an occupancy grid warmed on the
initial density, which skips the empty space around the blob).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch

from dream3d.representations.nerf import NeRFConfig, NeRFModel, sample_light_positions
from renderers.cameras import orbit_cameras
from renderers.gaussians import rasterize_gaussians, rasterize_gaussians_dense
from renderers.volume import make_occupancy_grid, nerfacc_available, update_occupancy_grid


def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize()


# The clock for every timing: wall time by default; ``--cpu-time`` switches to this process's CPU time,
# which on a shared machine counts only the work done, not the waits for a core (meaningful as a speed
# only with one thread: OMP_NUM_THREADS=1).
_clock = time.perf_counter


def time_fwd_bwd(render_fn, params, repeats: int) -> tuple[float, float]:
    """Median forward and backward seconds of ``render_fn(*params)`` after one warm-up run."""
    dev = params[0].device
    fwd, bwd = [], []
    for i in range(repeats + 1):
        for p in params:
            p.grad = None
        _sync(dev)
        t0 = _clock()
        out = render_fn(*params)
        loss = out.rgb.mean() + out.alpha.mean() + 0.1 * out.depth.mean()
        _sync(dev)
        t1 = _clock()
        loss.backward()
        _sync(dev)
        t2 = _clock()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd)


def gaussian_scene(n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)
    spacing = 0.5 * (4 / 3 * math.pi / n) ** (1 / 3)
    scales = spacing * (0.5 + torch.rand(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opac = 0.1 + 0.8 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return [t.to(device).requires_grad_(True) for t in (means, quats, scales, opac, colors)]


def bench_gaussians(
    counts, sizes, batch: int, repeats: int, device, dense_max_pairs: float, tile_sizes=(8,)
) -> list[dict]:
    """Rows of {renderer, backend, n, size, batch, forward_s, backward_s, total_s, vs_torch}; the torch
    compositor once per tile size ("torch/t16", ...), and vs_torch relative to the first of them."""
    backends = [f"torch/t{ts}" for ts in tile_sizes]
    if device.type == "cuda":
        try:
            import gsplat  # noqa: F401

            backends.append("gsplat")
        except ImportError:
            pass
    rows = []
    for n in counts:
        params = gaussian_scene(n, device)
        for size in sizes:
            cams = orbit_cameras(torch.linspace(0, 30, batch), torch.linspace(0, 270, batch), 2.5, 49.0, size, size).to(
                device
            )
            bg = torch.ones(3, device=device)
            times = {}
            for backend in backends:
                name, _, ts = backend.partition("/t")
                times[backend] = time_fwd_bwd(
                    lambda *p, b=name, t=int(ts or 0) or None: rasterize_gaussians(
                        *p, cams, bg, backend=b, tile_size=t
                    ),
                    params,
                    repeats,
                )
            if batch * size * size * n <= dense_max_pairs:
                times["dense"] = time_fwd_bwd(lambda *p: rasterize_gaussians_dense(*p, cams, bg), params, repeats)
            rows += timing_rows(times, backends[0], renderer="gaussians", n=n, size=size, batch=batch)
    return rows


def bench_volume(sizes, samples: int, shadings, batch: int, repeats: int, device) -> list[dict]:
    """Rows of {renderer, backend, n (samples per ray), size, batch, forward_s, backward_s, total_s, vs_torch}."""

    torch.manual_seed(0)
    model = NeRFModel(NeRFConfig()).to(device)
    params = list(model.parameters())
    backends = {"torch": None}
    if device.type == "cuda" and nerfacc_available():
        est = make_occupancy_grid(model.cfg.bound, resolution=128, device=device)
        with torch.no_grad():
            update_occupancy_grid(est, model.density, step=0, step_size=2 * model.cfg.bound / samples, every=1)
        backends["nerfacc"] = est
    rows = []
    for shading in shadings:
        for size in sizes:
            cams = orbit_cameras(
                torch.linspace(15, 30, batch), torch.linspace(0, 270, batch), 3.0, 45.0, size, size
            ).to(device)
            lights = sample_light_positions(cams, model.cfg, torch.Generator().manual_seed(0))
            times = {}
            for backend, est in backends.items():
                fn = lambda *p, b=backend, e=est: model.render(
                    cams, shading, lights, num_samples=samples, backend=b, estimator=e
                )  # noqa: E731
                times[backend] = time_fwd_bwd(fn, params, repeats)
            rows += timing_rows(times, "torch", renderer=f"vol/{shading[:4]}", n=samples, size=size, batch=batch)
    return rows


def timing_rows(times: dict, reference: str, **row) -> list[dict]:
    """One row per backend from its (forward, backward) seconds, relative to the ``reference`` backend; printed."""
    ref = sum(times[reference])
    rows = []
    for backend, (f, b) in times.items():
        rows.append(dict(row, backend=backend, forward_s=f, backward_s=b, total_s=f + b, vs_torch=(f + b) / ref))
        print(
            f"  {row['renderer']:9} {backend:9} n={row['n']:<6d} {row['size']:4d}px x{row['batch']}: fwd {f:8.3f}s"
            f"  bwd {b:8.3f}s  total {f + b:8.3f}s  ({(f + b) / ref:6.2f}x {reference})",
            flush=True,
        )
    return rows


def print_table(rows: list[dict]):
    print(
        f"\n{'renderer':10} {'backend':8} {'n':>7} {'px':>5} {'B':>3} {'forward s':>10} {'backward s':>11} {'total s':>9} {'x torch':>8}"
    )
    for r in rows:
        print(
            f"{r['renderer']:10} {r['backend']:8} {r.get('n', ''):>7} {r['size']:5d} {r['batch']:3d} {r['forward_s']:10.3f} {r['backward_s']:11.3f} {r['total_s']:9.3f} {r['vs_torch']:8.2f}"
        )


def write_json(path: str, rows: list[dict], args) -> None:
    meta = dict(
        device=str(args.device),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        processor=platform.processor(),
        repeats=args.repeats,
        clock="cpu" if getattr(args, "cpu_time", False) else "wall",
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=2)
    os.replace(path + ".tmp", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--only",
        nargs="+",
        default=["gaussians", "volume"],
        choices=["gaussians", "volume"],
        help="which renderers to time",
    )
    ap.add_argument("--gaussians", type=int, nargs="+", default=[5000, 20000, 50000], help="Gaussian counts")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="square image sizes in pixels")
    ap.add_argument(
        "--tile-sizes", type=int, nargs="+", default=[8], help="tile edges for the torch compositor (one row each)"
    )
    ap.add_argument("--batch", type=int, default=1, help="cameras rendered per call")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row (after one warm-up); the median is kept")
    ap.add_argument(
        "--dense-max-pairs", type=float, default=3e7, help="run the dense reference only up to B*H*W*N pairs"
    )
    ap.add_argument(
        "--volume-sizes", type=int, nargs="+", default=[64, 128], help="square image sizes for the volume renderer"
    )
    ap.add_argument("--samples", type=int, default=64, help="volume samples per ray")
    ap.add_argument(
        "--volume-shadings",
        nargs="+",
        default=["albedo"],
        choices=["albedo", "lambertian"],
        help="lambertian adds normals",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with this process's CPU time instead of wall time (shared machines; use one thread)",
    )
    ap.add_argument("--json", default="benchmarks/results/render.json", help="where to write all rows")
    args = ap.parse_args(argv)
    args.device = torch.device(args.device)
    global _clock
    _clock = time.process_time if args.cpu_time else time.perf_counter
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} clock={'cpu' if args.cpu_time else 'wall'}"
    )
    rows = []
    if "gaussians" in args.only:
        rows += bench_gaussians(
            args.gaussians, args.sizes, args.batch, args.repeats, args.device, args.dense_max_pairs, args.tile_sizes
        )
    if "volume" in args.only:
        rows += bench_volume(
            args.volume_sizes, args.samples, args.volume_shadings, args.batch, args.repeats, args.device
        )
    print_table(rows)
    if args.json:
        write_json(args.json, rows, args)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
