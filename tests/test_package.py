"""dream3d as a package: the wheel carries the presets, the embedded prior and the world classifier, and the
installed code finds them there; a checkout (or an editable install) finds the repository's folders."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dream3d
from dream3d import assets

REPO = Path(__file__).resolve().parents[1]
# What the build reads: pyproject.toml and setup.py name the rest.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "dream3d", "renderers", "configs", "assets")
PRIOR_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


def _data_files(folder: Path) -> dict[str, int]:
    """Every file the wheel must carry from a top-level data folder: its path in the wheel and its size."""
    out = {}
    for d, dirs, names in os.walk(folder):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x != "__pycache__"]
        for n in names:
            if not n.startswith("."):
                p = Path(d, n)
                out[f"dream3d/_data/{p.relative_to(REPO).as_posix()}"] = p.stat().st_size
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (an in-tree build would write build/ into the repository)."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 64:
        pytest.skip(f"setuptools {setuptools.__version__} is older than the build needs (>= 64)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if not (REPO / name).exists():
            continue
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        else:
            shutil.copy2(REPO / name, src / name)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp / "dist"),
        str(src),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not installed")
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("dream3d-*.whl")
    return whl


def test_the_wheel_carries_the_presets_the_prior_and_the_classifier(wheel):
    with zipfile.ZipFile(wheel) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    want = _data_files(REPO / "configs") | _data_files(REPO / "assets")
    missing = sorted(set(want) - set(sizes))
    assert not missing, missing
    assert all(sizes[k] == v for k, v in want.items())  # the weights themselves, not pointers or empty files
    for name in ("dreamgaussian", "gaussian-vsd", "dreamfusion", "prolificdreamer"):
        assert f"dream3d/_data/configs/{name}.yaml" in sizes
    assert any(k.startswith("dream3d/_data/configs/ablations/") for k in sizes)
    for f in PRIOR_FILES:
        assert f"dream3d/_data/assets/prior/{f}" in sizes, f
    assert sizes["dream3d/_data/assets/prior/unet/diffusion_pytorch_model.safetensors"] > 1_000_000
    assert "dream3d/_data/assets/world_classifier/model.safetensors" in sizes
    assert "dream3d/py.typed" in sizes
    # every package of the source tree, not only those that existed when the packaging was written
    for init in [*REPO.glob("dream3d/**/__init__.py"), *REPO.glob("renderers/**/__init__.py")]:
        assert init.relative_to(REPO).as_posix() in sizes, init


def test_the_installed_code_reads_its_data_from_the_package(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = (
        "import dream3d.assets as a\n"
        "from dream3d.config import load_run_config, preset_path\n"
        "from dream3d.guidance.prior import PriorConfig, resolve_model\n"
        "print(a.CONFIG_DIR, preset_path('dreamgaussian'), resolve_model(PriorConfig())[0], a.WORLD_CLASSIFIER,\n"
        "      sep='\\n')\n"
        "load_run_config('gaussian-vsd', ['prompt=a red cube'])\n"
    )
    # run outside the repository, with the unpacked wheel ahead of the editable install on the path
    env = dict(os.environ, PYTHONPATH=str(site), DREAM3D_ASSETS="")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = site / "dream3d" / "_data"
    config_dir, preset, prior, classifier = r.stdout.split("\n")[:4]
    assert Path(config_dir) == data / "configs" and Path(preset) == data / "configs" / "dreamgaussian.yaml"
    assert Path(prior) == data / "assets" / "prior" and Path(classifier) == data / "assets" / "world_classifier"


def test_a_checkout_reads_the_repositorys_folders_and_DREAM3D_ASSETS_overrides(tmp_path):
    if Path(dream3d.__file__).resolve().parent != REPO / "dream3d":
        pytest.skip("dream3d is imported from an installed copy, not this checkout")
    assert Path(assets.CONFIG_DIR) == REPO / "configs" and Path(assets.EMBEDDED_PRIOR) == REPO / "assets" / "prior"
    assert (REPO / "configs" / "dreamgaussian.yaml").exists() and (
        Path(assets.WORLD_CLASSIFIER) / "model.safetensors"
    ).exists()
    code = "import dream3d.assets as a; print(a.EMBEDDED_PRIOR, a.WORLD_CLASSIFIER, a.CONFIG_DIR, sep='\\n')"
    env = dict(os.environ, DREAM3D_ASSETS=str(tmp_path / "mine"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [
        str(tmp_path / "mine" / "prior"),
        str(tmp_path / "mine" / "world_classifier"),
        str(REPO / "configs"),
    ]


def test_the_readme_test_command_is_the_one_ci_runs_and_names_what_ci_adds():
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    (ci_tests,) = [line for line in ci.splitlines() if "python -m pytest" in line]
    assert ci_tests.replace("pip install -q ", "pip install ") in readme, ci_tests
    # what .ci/run installs that the README's command does not is named beside it
    if "gltf-validator" in ci:
        assert "npm install gltf-validator" in " ".join(readme.split())
