"""``DIR/index.html``: one card per run of a batch, an ablation or the quality benchmark.

A card shows the mesh in ``<model-viewer>`` (auto-rotating, with camera controls), the prompt, preset, seed,
time and steps/s, the scores where the run was judged, links to the run's files, and a failed run's error.
The cards come from ``DIR/summary.json`` (written by the executor) or, without one, from the run folders
found under DIR. Sorting and filtering are a few lines of plain JavaScript in the page.

The page works opened straight from the folder (``file://``), offline:

* model-viewer is not part of dream3d. On first use it is fetched from the npm registry with ``npm pack``
  (pinned to MODEL_VIEWER_VERSION) into a cache folder (``$DREAM3D_CACHE`` or ``~/.cache/dream3d``), and its
  self-contained UMD build is copied to ``DIR/gallery/``: a classic script, which Chromium runs from ``file://``
  where it refuses ES modules.
* A page opened from ``file://`` may not ``fetch()`` the ``.glb`` files beside it either, so each mesh is also
  written as a small script (``DIR/gallery/meshes/*.js``, the .glb in base64) that the page loads as a card
  scrolls into view and hands to model-viewer as a blob URL.
* Without npm (or without network on first use) the page says so and shows each run's turntable instead
  (``turntable.gif``, or ``turntable.mp4`` over a still of its first frame).

``dream3d gallery DIR --serve`` serves the folder on http://127.0.0.1 for browsers or settings that restrict
``file://`` pages further.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from urllib.parse import quote

from .executor import _metrics_fields
from .io import atomic_write_bytes, atomic_write_text
from .pipeline import mesh_error

MODEL_VIEWER_VERSION = "4.4.0"
VIEWER_JS = "model-viewer-umd.min.js"
ASSETS = "gallery"  # DIR/gallery: the viewer, the mesh scripts, the stills
RUN_FILES = (
    "mesh.glb",
    "mesh.obj",
    "mesh.png",
    "turntable.mp4",
    "turntable.gif",
    "gaussians.ply",
    "nerf.safetensors",
    "config.yaml",
    "metrics.json",
    "reference.png",
    "generate.log",
)
SCORES = (  # score key, label, format (a format string, a function, or None for yes / no)
    ("iou", "IoU", "{:.3f}"),
    ("chamfer_l1", "Chamfer ×100", lambda v: f"{100 * v:.2f}"),
    ("fscore_1pct", "F@1%", "{:.3f}"),
    ("fscore_2pct", "F@2%", "{:.3f}"),
    ("normal_consistency", "NC", "{:.3f}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("color_noise", "colour noise", "{:.4f}"),
    ("color_speckle", "speckle", "{:.4f}"),
    ("color_accuracy", "colour acc", "{:.2f}"),
    ("shape_accuracy", "shape acc", "{:.2f}"),
    ("palette_color", "palette colour", "{}"),
    ("janus", "Janus", None),
)


STATUS_WORDS = {"skipped": "done (an earlier batch)"}


def cache_dir() -> str:
    return os.environ.get("DREAM3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dream3d")


def model_viewer(log=print) -> tuple[str | None, str | None]:
    """(path of the cached model-viewer UMD build, None), fetching it with npm on first use; or (None, why not)."""
    folder = os.path.join(cache_dir(), f"model-viewer-{MODEL_VIEWER_VERSION}")
    path = os.path.join(folder, VIEWER_JS)
    if os.path.exists(path):
        return path, None
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed, so @google/model-viewer could not be fetched from the npm registry"
    log(f"fetching @google/model-viewer@{MODEL_VIEWER_VERSION} from the npm registry (once; cached in {folder})")
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        try:
            r = subprocess.run(
                [
                    npm,
                    "pack",
                    f"@google/model-viewer@{MODEL_VIEWER_VERSION}",
                    "--pack-destination",
                    tmp,
                    "--prefer-offline",
                    "--fetch-retries=1",
                    "--fetch-timeout=30000",
                    "--silent",
                ],
                capture_output=True,
                text=True,
                timeout=180,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            return None, "npm pack @google/model-viewer timed out (no network?)"
        tarballs = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
        if r.returncode != 0 or not tarballs:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"npm pack @google/model-viewer failed ({last[:200]})"
        with tarfile.open(os.path.join(tmp, tarballs[0])) as tar:
            for member, name in ((f"package/dist/{VIEWER_JS}", VIEWER_JS), ("package/LICENSE", "LICENSE")):
                try:
                    data = tar.extractfile(member).read()
                except (KeyError, AttributeError):
                    if name == VIEWER_JS:
                        return (
                            None,
                            f"the npm package @google/model-viewer@{MODEL_VIEWER_VERSION} has no dist/{VIEWER_JS}",
                        )
                    continue
                atomic_write_bytes(os.path.join(folder, name), data)
    return path, None


def _rows(out_dir: str) -> list[dict]:
    """The runs to show: summary.json's rows, or every run folder (one holding config.yaml) under ``out_dir``."""
    path = os.path.join(out_dir, "summary.json")
    if os.path.exists(path):
        try:
            with open(path) as fh:
                return list(json.load(fh)["runs"])
        except (ValueError, KeyError, TypeError) as e:
            from .errors import UserError

            raise UserError(
                f"{path} is not a summary dream3d wrote ({type(e).__name__}: {e}); move it away, and the gallery "
                "shows every run folder under the folder instead"
            ) from None
    import yaml

    rows = []
    for root, dirs, files in sorted(os.walk(out_dir)):
        dirs[:] = sorted(d for d in dirs if d != ASSETS and not d.startswith("."))
        if "config.yaml" not in files:
            continue
        with open(os.path.join(root, "config.yaml")) as fh:
            cfg = yaml.safe_load(fh) or {}
        finished = "metrics.json" in files
        err = mesh_error(root) if finished else None
        status = "failed" if err else ("done" if finished else "unfinished")
        rows.append(
            {
                "name": os.path.relpath(root, out_dir),
                "status": status,
                "prompt": cfg.get("prompt", ""),
                "image": cfg.get("image"),
                "preset": f"{cfg.get('representation', '?')} + {(cfg.get('guidance') or {}).get('method', '?')}",
                "seed": cfg.get("seed"),
                "error": f"mesh stage: {err}" if err else None,
                **_metrics_fields(root),
            }
        )
        dirs[:] = []  # a run folder holds no runs
    return rows


def _still(run_dir: str, dest: str) -> bool:
    """The first frame of the run's turntable (its front) as a PNG at ``dest``; False if there is no turntable."""
    import imageio.v2 as imageio

    for name in ("turntable.gif", "turntable.mp4"):
        src = os.path.join(run_dir, name)
        if os.path.exists(src):
            if os.path.exists(dest) and os.path.getmtime(dest) >= os.path.getmtime(src):
                return True
            try:
                frame = imageio.get_reader(src).get_data(0)
            except Exception:  # an unreadable video: the card goes without a still
                return False
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            imageio.imwrite(dest, frame[..., :3], format="PNG")
            return True
    return False


def _mesh_script(glb: str, dest: str, key: str) -> None:
    """The .glb as a classic script that hands it to the page (see the module's docstring)."""
    if os.path.exists(dest) and os.path.getmtime(dest) >= os.path.getmtime(glb):
        return
    with open(glb, "rb") as fh:
        data = base64.b64encode(fh.read()).decode()
    atomic_write_text(dest, f'dream3dMesh("{key}", "{data}");\n')


def _fmt(v, spec="{:.1f}") -> str:
    return "" if v is None else spec.format(v)


def _card(row: dict, k: int, out_dir: str, viewer: bool) -> str:
    e = html.escape
    name = row["name"]
    run_dir = os.path.join(out_dir, name)
    href = lambda f: e(quote(name.replace(os.sep, "/") + "/" + f))  # noqa: E731
    key = f"r{k}_" + re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40]
    scores = row.get("scores") or {}
    status = row.get("status", "")
    failed = status in ("failed", "interrupted", "unfinished")
    # the mesh, and the turntable shown where there is no viewer
    still = (
        f"{ASSETS}/stills/{key}.png" if _still(run_dir, os.path.join(out_dir, ASSETS, "stills", f"{key}.png")) else None
    )
    if os.path.exists(os.path.join(run_dir, "turntable.gif")):
        turntable = f'<img class="turntable" src="{href("turntable.gif")}" alt="turntable">'
    elif os.path.exists(os.path.join(run_dir, "turntable.mp4")):
        poster = f' poster="{still}"' if still else ""
        turntable = (
            f'<video class="turntable" src="{href("turntable.mp4")}"{poster} autoplay loop muted playsinline></video>'
        )
    else:
        turntable = '<div class="turntable empty">no turntable</div>'
    glb = os.path.join(run_dir, "mesh.glb")
    model = ""
    if viewer and os.path.exists(glb):
        _mesh_script(glb, os.path.join(out_dir, ASSETS, "meshes", f"{key}.js"), key)
        poster = f' poster="{still}"' if still else ""
        model = (
            f'<model-viewer data-key="{key}" data-mesh="{ASSETS}/meshes/{key}.js" alt="{e(str(row.get("prompt") or name))}" '
            f'camera-controls auto-rotate auto-rotate-delay="0" interaction-prompt="none"{poster}></model-viewer>'
        )
    facts = [
        ("preset", row.get("preset")),
        ("variant", row.get("variant")),
        ("seed", row.get("seed")),
        ("time", _fmt(row.get("total_seconds"), "{:.0f} s")),
        ("steps/s", _fmt(row.get("steps_per_second"), "{:.2f}")),
        ("steps", row.get("steps")),
        ("attempts", row.get("attempts") if (row.get("attempts") or 0) > 1 else None),
    ]
    for field, label, spec in SCORES:
        v = scores.get(field)
        if v is not None:
            text = ("yes" if v else "no") if spec is None else spec(v) if callable(spec) else spec.format(v)
            facts.append((label, text))
    dl = "".join(f"<dt>{e(str(a))}</dt><dd>{e(str(b))}</dd>" for a, b in facts if b not in (None, ""))
    links = " ".join(f'<a href="{href(f)}">{e(f)}</a>' for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f)))
    error = f'<pre class="error">{e(str(row.get("error") or status))}</pre>' if failed or row.get("error") else ""
    title = row.get("prompt") or os.path.basename(str(row.get("image") or "")) or name
    text = " ".join(str(row.get(f) or "") for f in ("name", "prompt", "preset", "variant", "image")).lower()
    data = {
        "name": name,
        "prompt": row.get("prompt") or "",
        "preset": row.get("preset") or "",
        "status": status,
        "time": row.get("total_seconds"),
        "sps": row.get("steps_per_second"),
        "iou": scores.get("iou"),
        "text": text,
    }
    attrs = " ".join(f'data-{k}="{e("" if v is None else str(v))}"' for k, v in data.items())
    return (
        f'<article class="card {"failed" if failed else "ok"}" {attrs}>\n<div class="view">{model}{turntable}</div>\n'
        f'<h2>{e(str(title))}</h2>\n<p class="name">{e(name)} · {e(STATUS_WORDS.get(status, status))}</p>\n<dl>{dl}</dl>\n{error}\n'
        f'<p class="files">{links}</p>\n</article>'
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }}
header {{ display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin-bottom: 12px; }}
h1 {{ font-size: 20px; margin: 0 12px 0 0; }}
.note {{ background: #fff4d6; border: 1px solid #e6c86e; padding: 8px; margin-bottom: 12px; }}
#cards {{ display: grid; grid-template-columns: repeat(auto-fill, 300px); gap: 12px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px; }}
.card.failed {{ border-color: #d33; }}
.card h2 {{ font-size: 15px; margin: 8px 0 2px; }}
.view {{ width: 280px; height: 280px; background: #eeeeee; }}
model-viewer {{ width: 280px; height: 280px; background-color: #eeeeee; --poster-color: #eeeeee; }}
.turntable {{ width: 280px; height: 280px; object-fit: contain; display: none; }}
.empty {{ line-height: 280px; text-align: center; color: #888; }}
body.no-viewer model-viewer {{ display: none; }}
body.no-viewer .turntable, .view:not(:has(model-viewer)) .turntable {{ display: block; }}
.name {{ color: #777; margin: 0 0 6px; font-size: 12px; word-break: break-all; }}
dl {{ display: grid; grid-template-columns: auto 1fr; gap: 0 10px; margin: 0; font-size: 13px; }}
dt {{ color: #666; }} dd {{ margin: 0; }}
.error {{ white-space: pre-wrap; color: #a00; background: #fff0f0; padding: 6px; font-size: 12px; max-height: 160px; overflow: auto; }}
.files a {{ margin-right: 6px; font-size: 12px; }}
</style>
{viewer_script}
</head><body class="{body_class}">
<header><h1>{title}</h1>
<input id="filter" placeholder="filter by prompt or preset" size="28">
<select id="preset"><option value="">all presets</option>{preset_options}</select>
<select id="sort">
<option value="name:1">sort: folder</option><option value="prompt:1">prompt</option><option value="preset:1">preset</option>
<option value="status:1">status</option><option value="time:1">time (shortest first)</option>
<option value="sps:-1">steps/s (fastest first)</option><option value="iou:-1">IoU (best first)</option>
</select><span id="count"></span></header>
<div class="note" id="note"{note_hidden}>{note}</div>
<div id="cards">
{cards}
</div>
<script>
// Each mesh arrives as a classic script (file:// pages may not fetch() files) and becomes a blob URL.
function dream3dMesh(key, b64) {{
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  document.querySelector(`model-viewer[data-key="${{key}}"]`).src = URL.createObjectURL(new Blob([bytes], {{type: "model/gltf-binary"}}));
}}
if (!document.body.classList.contains("no-viewer") && !customElements.get("model-viewer")) {{
  document.body.classList.add("no-viewer");
  const note = document.getElementById("note");
  note.hidden = false;
  note.textContent = "The 3D viewer ({viewer_file}) did not load; showing each run's turntable instead.";
}}
if (!document.body.classList.contains("no-viewer")) {{
  const seen = new IntersectionObserver(entries => entries.forEach(en => {{
    if (!en.isIntersecting) return;
    seen.unobserve(en.target);
    const s = document.createElement("script");
    s.src = en.target.dataset.mesh;
    document.head.append(s);
  }}), {{rootMargin: "600px"}});
  document.querySelectorAll("model-viewer[data-mesh]").forEach(mv => seen.observe(mv));
}}
// Sort and filter.
const grid = document.getElementById("cards"), cards = [...grid.children];
const [filter, preset, sort] = ["filter", "preset", "sort"].map(id => document.getElementById(id));
function show() {{
  const q = filter.value.toLowerCase(), [key, dir] = sort.value.split(":");
  const val = c => c.dataset[key] === "" ? null : isNaN(c.dataset[key]) ? c.dataset[key] : +c.dataset[key];
  cards.forEach(c => c.hidden = !c.dataset.text.includes(q) || (preset.value !== "" && c.dataset.preset !== preset.value));
  cards.sort((a, b) => {{
    const x = val(a), y = val(b);
    return x === y ? 0 : x === null ? 1 : y === null ? -1 : (x < y ? -1 : 1) * +dir;
  }}).forEach(c => grid.append(c));
  document.getElementById("count").textContent = `${{cards.filter(c => !c.hidden).length}} of ${{cards.length}} runs`;
}}
[filter, preset, sort].forEach(el => el.addEventListener("input", show));
show();
</script>
</body></html>
"""


def write_gallery(out_dir: str, title: str | None = None, log=print) -> str:
    """Write ``out_dir/index.html`` (and ``out_dir/gallery/``) for the runs in ``out_dir``; returns its path."""
    rows = _rows(out_dir)
    src, why = model_viewer(log)
    assets = os.path.join(out_dir, ASSETS)
    os.makedirs(assets, exist_ok=True)
    if src:
        for name in (VIEWER_JS, "LICENSE"):
            f = os.path.join(os.path.dirname(src), name)
            dest = os.path.join(assets, VIEWER_JS if name == VIEWER_JS else "LICENSE-model-viewer")
            if os.path.exists(f) and not (os.path.exists(dest) and os.path.getsize(dest) == os.path.getsize(f)):
                shutil.copyfile(f, dest)
    cards = [_card(r, k, out_dir, viewer=src is not None) for k, r in enumerate(rows)]
    note = (
        ""
        if src
        else (
            f"No 3D viewer: {html.escape(why)}. Showing each run's turntable instead; run <code>dream3d gallery "
            f"{html.escape(out_dir)}</code> where npm can reach its registry to add the viewer."
        )
    )
    presets = sorted({str(r.get("preset")) for r in rows if r.get("preset")})
    page = PAGE.format(
        title=html.escape(title or f"dream3d: {os.path.basename(os.path.abspath(out_dir))} ({len(rows)} runs)"),
        viewer_script=f'<script src="{ASSETS}/{VIEWER_JS}"></script>' if src else "",
        body_class="" if src else "no-viewer",
        note=note,
        note_hidden="" if note else " hidden",
        viewer_file=VIEWER_JS,
        preset_options="".join(f'<option value="{html.escape(p)}">{html.escape(p)}</option>' for p in presets),
        cards="\n".join(cards),
    )
    path = os.path.join(out_dir, "index.html")
    atomic_write_text(path, page)
    log(f"wrote {path} ({len(rows)} runs{'' if src else '; no 3D viewer: ' + why})")
    return path


def serve(out_dir: str, port: int = 8000) -> None:
    """Serve ``out_dir`` on http://127.0.0.1:port until Ctrl-C."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=out_dir)
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving {out_dir} at http://127.0.0.1:{server.server_address[1]}/index.html (Ctrl-C stops)", flush=True)
        server.serve_forever()
