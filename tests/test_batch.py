"""dream3d batch: prompt files, Ray on this machine and on a two-node cluster, retries, failures, the summary,
and the gallery in headless Chromium. Ray tests skip where Ray is not installed (pip install 'dream3d[batch]')."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TINY_RUN

# Ray on this machine stays on the loopback interface (Ray reads this when it is imported; see executor.import_ray)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ENV = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'dream3d[batch]')")

# image-to-3D of a coloured shape fits its colour in a few dozen steps, even with the tiny random prior
IMAGE_RUN = TINY_RUN + [
    "train.steps=40",
    "train.checkpoint_every=0",
    "train.val_every=0",
    "gaussians.num_points=1000",
    "gaussians.densify_from_step=1000",
]
COLOURS = {"a red cube": (0, "red"), "a green sphere": (1, "green"), "a blue cylinder": (2, "blue")}


def batch(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "dream3d.cli", "batch", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_prompt_files_text_and_yaml(tmp_path):
    from dream3d.batch import build_specs, read_prompts
    from dream3d.configtools import ConfigError
    from dream3d.executor import check_specs

    txt = tmp_path / "p.txt"
    txt.write_text("# a level\na red cube\n\n  a blue house  \n# done\n")
    assert [e["prompt"] for e in read_prompts(str(txt))] == ["a red cube", "a blue house"]
    (tmp_path / "img").mkdir()
    yml = tmp_path / "p.yaml"
    yml.write_text(
        "- a red cube\n- {prompt: a red cube, seed: 3, overrides: train.steps=7}\n"
        "- {image: img/mug.png, prompt: a green mug, config: dreamgaussian, name: mug_photo}\n"
    )
    entries = read_prompts(str(yml))
    assert entries[2]["image"] == str(tmp_path / "img" / "mug.png") and entries[1]["overrides"] == ["train.steps=7"]
    specs = build_specs(entries, "dreamfusion", ["train.steps=5"])
    assert [s.name for s in specs] == ["a_red_cube", "a_red_cube_seed3", "mug_photo"]
    assert [s.cfg.train.steps for s in specs] == [5, 7, 5] and specs[1].cfg.seed == 3
    assert specs[0].cfg.representation == "nerf" and specs[2].labels["preset"] == "dreamgaussian"
    assert specs[2].cfg.image.endswith("mug.png") and specs[2].cfg.prompt == "a green mug"
    for bad, words in [
        ("- {prompt: x, sede: 1}\n", "unknown key 'sede'"),
        ("- {seed: 1}\n", "neither a prompt nor an image"),
        ("- {prompt: a red cube, overrides: [train.stepz=1]}\n", "item 1: "),
        ("a: b\n", "is a list"),
        ("- {prompt: a red cube, config: zero123}\n", "draws the views from an image: give the entry an image"),
    ]:
        yml.write_text(bad)
        with pytest.raises(ConfigError, match=words):
            build_specs(read_prompts(str(yml)), None, [])
    txt.write_bytes("\ufeffa red cube\n".encode())  # a BOM (Windows editors) is not part of the first prompt
    assert [e["prompt"] for e in read_prompts(str(txt))] == ["a red cube"]
    yml.write_bytes("\ufeff- a red cube\n".encode())
    assert [e["prompt"] for e in read_prompts(str(yml))] == ["a red cube"]
    txt.write_text("a red cube\nA red cube!\n")  # two prompts, one folder
    with pytest.raises(ConfigError, match="would share the folder"):
        check_specs(build_specs(read_prompts(str(txt)), None, []), str(tmp_path / "out"))


def test_a_node_that_does_not_see_the_output_folder_fails_its_run_with_that_message(tmp_path):
    from dream3d.config import load_run_config
    from dream3d.executor import RunSpec, run_one

    spec = RunSpec(
        "a_red_cube", load_run_config("dreamgaussian", [], {"prompt": "a red cube"}), {"prompt": "a red cube"}
    )
    row = run_one(
        spec, str(tmp_path / "elsewhere"), batch_id="b1"
    )  # the driver's marker is not there: another machine's folder
    assert row["status"] == "failed" and "shared file system" in row["error"] and not (tmp_path / "elsewhere").exists()


def test_batch_without_ray_says_how_to_install_it(tmp_path):
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    (tmp_path / "p.txt").write_text("a red cube\n")
    env = dict(ENV, PYTHONPATH=str(tmp_path / "no_ray") + os.pathsep + ENV.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-m", "dream3d.cli", "batch", str(tmp_path / "p.txt"), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2 and "pip install 'dream3d[batch]'" in r.stderr and "--local" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out" / "a_red_cube").exists()


@pytest.fixture(scope="module")
def colour_batch(tiny_prior, tmp_path_factory):
    """Three image-to-3D prompts (a red cube, a green sphere, a blue cylinder) on Ray started here, 2 workers."""
    import imageio.v3 as iio
    import torch

    from dream3d.world.render import render_colored_mesh
    from dream3d.world.shapes import scene_for_prompt
    from renderers.cameras import orbit_cameras

    if not HAVE_RAY:
        pytest.skip("Ray is not installed")
    root = tmp_path_factory.mktemp("colour_batch")
    lines = []
    for prompt in COLOURS:
        rgb, alpha = render_colored_mesh(scene_for_prompt(prompt), orbit_cameras(0.0, 0.0, 2.8, 45.0, 64, 64))
        png = root / (prompt.split()[-1] + ".png")
        iio.imwrite(png, (torch.cat([rgb, alpha], -1)[0].numpy() * 255).round().astype(np.uint8))
        lines.append(f"- {{prompt: {prompt}, image: {png.name}}}")
    (root / "prompts.yaml").write_text("\n".join(lines) + "\n")
    args = [
        str(root / "prompts.yaml"),
        "-o",
        str(root / "out"),
        "--workers",
        "2",
        "--judge",
        "--config",
        "dreamgaussian",  # reference view + text SDS, with the tiny text prior
        *IMAGE_RUN,
        f"guidance.prior.model={tiny_prior}",
    ]
    return root / "out", args, batch(*args)


@needs_ray
def test_batch_on_local_ray_writes_every_run_and_the_summary(colour_batch):
    out, _, r = colour_batch
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [x["name"] for x in rows] == ["a_red_cube", "a_green_sphere", "a_blue_cylinder"]
    assert all(x["status"] == "done" and x["steps"] == "40" and x["preset"] == "dreamgaussian" for x in rows), rows
    for x in rows:
        run = out / x["name"]
        assert (run / "mesh.glb").exists() and json.loads((run / "metrics.json").read_text())["reference_view"][
            "silhouette_iou"
        ] > 0.7
        assert "=== dream3d batch" in (run / "generate.log").read_text()  # each run logs to its own file
    s = summary(out)
    assert s["counts"] == {"done": 3, "skipped": 0, "failed": 0, "interrupted": 0} and s["mode"] == "ray (local)"
    assert "runs: 3/3 done, 0 failed, 0 running, 0 waiting" in r.stderr and "2 running" in r.stderr  # two at a time
    assert all(
        0 <= float(x["iou"]) <= 1 and x["palette_color"] for x in rows
    )  # --judge: scored against the shape world
    assert (out / "index.html").exists() and "<dt>IoU</dt>" in (out / "index.html").read_text()


@needs_ray
def test_batch_again_skips_all_three(colour_batch):
    out, args, first = colour_batch
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.stat().st_mtime for p in out.glob("*/metrics.json")}
    t0 = time.time()
    r = batch(*args)
    assert r.returncode == 0 and r.stderr.count("finished before, skipped") == 3, r.stderr[-3000:]
    assert [x["status"] for x in summary(out)["runs"]] == ["skipped"] * 3
    assert {p: p.stat().st_mtime for p in out.glob("*/metrics.json")} == before and time.time() - t0 < 120


def _drawn(shot: np.ndarray, box) -> np.ndarray:
    """Pixels of a model-viewer box that differ from its background (#eeeeee)."""
    x, y, w, h = (int(round(v)) for v in box)
    crop = shot[y + 2 : y + h - 2, x + 2 : x + w - 2, :3].astype(int)
    return crop[np.abs(crop - 0xEE).max(-1) > 40]


@needs_ray
def test_gallery_draws_every_model_in_headless_chromium(colour_batch, tmp_path):
    import imageio.v3 as iio

    from browser import CARD_BOXES, WAIT_FOR_MODELS, Browser, find_chromium
    from dream3d.gallery import model_viewer

    if find_chromium() is None:
        pytest.skip("no chromium (apt-get install chromium)")
    if model_viewer(log=lambda m: None)[0] is None:
        pytest.skip("@google/model-viewer is not available (npm missing or offline)")
    out, _, r = colour_batch
    assert r.returncode == 0, r.stderr[-3000:]
    page = (out / "index.html").read_text()
    assert page.count('<article class="card ok"') == 3 and "gallery/model-viewer-umd.min.js" in page
    b = Browser(1280, 800)
    try:
        b.open(f"file://{out}/index.html")
        assert b.evaluate(WAIT_FOR_MODELS % 120000, timeout=200) == [True] * 3
        cards = b.evaluate(CARD_BOXES)
        shot = iio.imread(b.screenshot())
        (tmp_path / "gallery.png").write_bytes(iio.imwrite("<bytes>", shot, extension=".png"))
        for card in cards:
            px = _drawn(shot, card["box"])
            assert len(px) > 0.03 * card["box"][2] * card["box"][3], f"{card['name']}: the canvas is blank"
            channel, colour = COLOURS[card["prompt"]]
            mean = px.mean(0)
            # model-viewer's neutral lighting and tone mapping desaturate; a grey model has channels within ~5
            assert mean.argmax() == channel and mean[channel] > mean.min() + 25, (
                f"{card['name']} is not {colour}: mean RGB {mean}"
            )
        # filter and sort, the page's own script
        assert b.evaluate("filter.value = 'green'; show(); cards.filter(c => !c.hidden).map(c => c.dataset.name)") == [
            "a_green_sphere"
        ]
        assert b.evaluate(
            "filter.value = ''; sort.value = 'prompt:1'; show(); [...grid.children].map(c => c.dataset.prompt)"
        ) == ["a blue cylinder", "a green sphere", "a red cube"]
    finally:
        b.close()


def test_gallery_without_the_viewer_shows_turntables_and_errors(colour_batch, tmp_path, monkeypatch):
    from dream3d.gallery import write_gallery

    out, _, r = colour_batch
    assert r.returncode == 0, r.stderr[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    s = summary(copy)
    s["runs"].append(
        {
            "name": "a_purple_mug",
            "status": "failed",
            "prompt": "a purple mug",
            "preset": "dreamgaussian",
            "error": "cannot read image 'mug.png'",
        }
    )
    (copy / "summary.json").write_text(json.dumps(s))
    monkeypatch.setenv("DREAM3D_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    page = open(write_gallery(str(copy), log=lambda m: None)).read()
    assert "No 3D viewer: npm is not installed" in page and "<model-viewer" not in page
    assert page.count('class="turntable"') == 3 and 'class="card failed"' in page and "cannot read image" in page
    assert len(list((copy / "gallery" / "stills").glob("*.png"))) == 3


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes on this machine, one CPU each (shared by the tests below)."""
    if not HAVE_RAY:
        pytest.skip("Ray is not installed")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@needs_ray
def test_two_node_cluster_runs_a_batch_across_both_nodes_and_a_failure_stops_nothing(two_nodes, tiny_prior, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "p.yaml").write_text("- a red cube\n- {prompt: a yellow torus, image: bad.png}\n- a green cone\n")
    out = tmp_path / "out"
    r = batch(
        str(tmp_path / "p.yaml"),
        "-o",
        str(out),
        "--address",
        two_nodes.address,
        "--config",
        "dreamgaussian",
        *TINY_RUN,
        f"guidance.prior.model={tiny_prior}",
    )
    assert r.returncode == 1 and "1 of 3 runs failed" in r.stderr and "cannot read image" in r.stderr, r.stderr[-3000:]
    rows = {x["name"]: x for x in summary(out)["runs"]}
    assert rows["a_red_cube"]["status"] == rows["a_green_cone"]["status"] == "done"
    assert rows["a_yellow_torus"]["status"] == "failed" and "cannot read image" in rows["a_yellow_torus"]["error"]
    assert (out / "a_red_cube" / "mesh.glb").exists() and (out / "a_green_cone" / "mesh.glb").exists()
    assert len({x["node"] for x in rows.values()}) == 2  # one CPU a node: two runs at a time means both nodes
    assert any("cannot read image" in x["error"] for x in csv.DictReader(open(out / "summary.csv")))
    assert "cannot read image" in (out / "index.html").read_text()


@needs_ray
def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(two_nodes, tiny_prior, tmp_path):
    import torch

    (tmp_path / "p.txt").write_text("a blue sphere\n")
    out, run = tmp_path / "out", tmp_path / "out" / "a_blue_sphere"
    args = [
        str(tmp_path / "p.txt"),
        "-o",
        str(out),
        "--address",
        two_nodes.address,
        "--config",
        "dreamgaussian",
        *TINY_RUN,
        "train.steps=30",
        "train.val_every=0",
        f"guidance.prior.model={tiny_prior}",
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "dream3d.cli", "batch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.time() + 400
    while not (run / "checkpoint.pt").exists():
        assert p.poll() is None and time.time() < deadline, (
            p.communicate()[1][-3000:] if p.poll() is not None else "timed out"
        )
        time.sleep(0.2)
    header = next(
        line for line in (run / "generate.log").read_text().splitlines() if line.startswith("=== dream3d batch")
    )
    pid = int(header.split("(pid ")[1].split(")")[0])
    os.kill(pid, signal.SIGKILL)
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert killed_at < 30 and not (run / "metrics.json").exists()
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    row = summary(out)["runs"][0]
    assert row["status"] == "done" and row["attempts"] == 2 and row["steps"] == 30, row
    log = (run / "generate.log").read_text()
    assert "attempt 2" in log and "resumed" in log
    resumed_at = int(log.split("resumed ")[1].split("at step ")[1].split()[0])
    assert resumed_at == killed_at >= 2  # from the checkpoint the killed worker left


@needs_ray
def test_ablation_through_ray_gives_the_results_it_gives_in_series(two_nodes, tiny_prior, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "base: dreamgaussian\n"
        f"overrides: {json.dumps(TINY_RUN + ['guidance.prior.model=' + tiny_prior, 'output.mesh=false'])}\n"
        "prompts: ['a red cube']\nvariants:\n  cfg10: [guidance.sds.guidance_scale=10]\n  cfg50: [guidance.sds.guidance_scale=50]\n"
    )
    results = {}
    for how, extra in (("series", []), ("ray", ["--address", two_nodes.address])):
        r = subprocess.run(
            [sys.executable, "-m", "dream3d.cli", "ablate", str(spec), "-o", str(tmp_path / how), *extra],
            capture_output=True,
            text=True,
            env=dict(ENV, OMP_NUM_THREADS="1"),
            timeout=900,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        results[how] = list(csv.DictReader(open(tmp_path / how / "results.csv")))
    timing = ("total_seconds", "train_seconds", "steps_per_second")
    same = [{k: v for k, v in row.items() if k not in timing} for row in results["series"]]
    assert same == [{k: v for k, v in row.items() if k not in timing} for row in results["ray"]]
    assert {x["node"] for x in summary(tmp_path / "ray")["runs"]} != {None}


def test_a_finished_run_whose_mesh_settings_changed_is_pointed_to_dream3d_mesh(tmp_path):
    """Before, a list edited in mesh.* only was told to delete the finished run's folder and train it again."""
    import shlex

    from dream3d.batch import build_specs
    from dream3d.config import load_run_config
    from dream3d.configtools import to_yaml
    from dream3d.executor import check_specs
    from dream3d.pipeline import RunError, config_changes

    entries = [{"prompt": "a red cube", "where": "line 1"}, {"prompt": "a blue cone", "where": "line 2"}]
    run_dirs = [tmp_path / "out" / "a_red_cube", tmp_path / "out" / "a_blue_cone"]
    for run_dir, earlier in zip(run_dirs, build_specs(entries, "dreamgaussian", ["train.steps=5"])):
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(to_yaml(earlier.cfg))
        (run_dir / "metrics.json").write_text('{"mesh": {"faces": 10}}')  # finished
    now = ["train.steps=5", "mesh.resolution=96", "mesh.extract.blur_sigma=0.5", "output.turntable_frames=12"]
    specs = build_specs(entries, "dreamgaussian", now)
    with pytest.raises(
        RunError, match="2 finished run.* training is the same, so mesh them again with: dream3d mesh"
    ) as e:
        check_specs(specs, str(tmp_path / "out"))
    commands = str(e.value).split("mesh them again with: ")[1].split(" (or delete")[0].split("; ")
    assert len(commands) == 2  # every run in one message (before: one folder per try)
    for command, run_dir, spec in zip(commands, run_dirs, specs):
        command = shlex.split(command)
        assert command[:3] == ["dream3d", "mesh", str(run_dir)]
        # the advised overrides give exactly the settings the list now asks for
        assert config_changes(spec.cfg, str(run_dir / "config.yaml")) != []
        remeshed = load_run_config(str(run_dir / "config.yaml"), command[3:])
        (run_dir / "config.yaml").write_text(to_yaml(remeshed))
        assert config_changes(spec.cfg, str(run_dir / "config.yaml")) == []
    run_dir, entries = run_dirs[0], entries[:1]
    # a list that no longer asks for a mesh leaves the finished run's alone (no advice that could loop)
    check_specs(build_specs(entries, "dreamgaussian", [*now, "output.mesh=false"]), str(tmp_path / "out"))
    # a change to training still needs a new run
    spec = build_specs(entries, "dreamgaussian", ["train.steps=6", "mesh.resolution=96"])[0]
    with pytest.raises(RunError, match="delete that folder to run it again"):
        check_specs([spec], str(tmp_path / "out"))
    # ... unless nothing was trained: a run that failed before its first checkpoint is retried with the new list
    (run_dir / "metrics.json").unlink()
    check_specs([spec], str(tmp_path / "out"))
