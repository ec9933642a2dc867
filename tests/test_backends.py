"""renderers.backends: each CUDA library fails the way it does on a GPU machine, simulated on CPU.

A library that cannot be imported, built or loaded sends its renderer's ``auto`` pick to torch with one
warning line (library, why, fix), and a backend forced by name is a clear RuntimeError. nvdiffrast's
plugin is found after its build (the ModuleNotFoundError of issue #16).
"""

import contextlib
import importlib
import importlib.util
import os
import sys
import warnings

import pytest
import torch

from renderers import backends, gaussians, mesh, volume

CUDA = torch.device("cuda")  # a device object needs no GPU
PACKAGES = ("gsplat", "nerfacc", "nvdiffrast")


@pytest.fixture(autouse=True)
def fresh_backends(request, monkeypatch, tmp_path):
    """Every test starts with nothing loaded or warned, and leaves the process's real state as it was.
    torch reports a CUDA build (13.0), as on the GPU machine, so that the fixes named are a CUDA build's.
    CUDA tests use the real state (and the extensions already built)."""
    if request.node.get_closest_marker("cuda"):
        yield
        return
    monkeypatch.setattr(backends, "_LOADS", {})
    monkeypatch.setattr(backends, "_WARNED", set())
    monkeypatch.setattr(backends, "_NV_CONTEXTS", {})
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in PACKAGES}
    volume._nerfacc.cache_clear()
    yield
    for k in [k for k in sys.modules if k.split(".")[0] in PACKAGES]:
        del sys.modules[k]
    sys.modules.update(saved)
    volume._nerfacc.cache_clear()


def fake_package(tmp_path, monkeypatch, files: dict[str, str]):
    """Put a package made of ``files`` (path -> source) first on sys.path, shadowing an installed one."""
    root = tmp_path / "fake_site"
    for rel, src in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(src)
    for k in [k for k in sys.modules if k.split(".")[0] in {r.split("/")[0] for r in files}]:
        del sys.modules[k]  # the fixture puts them back
    monkeypatch.syspath_prepend(str(root))


def picks(device=CUDA) -> dict[str, str]:
    """What each renderer's ``auto`` takes on ``device`` (the volume renderer with an occupancy grid)."""
    return {
        "gsplat": gaussians._pick_backend("auto", device, torch.float32),
        "nerfacc": volume._pick_backend("auto", device, estimator=object()),
        "nvdiffrast": mesh._pick_backend("auto", device),
    }


def forced(library: str, device=CUDA):
    if library == "gsplat":
        return gaussians._pick_backend("gsplat", device, torch.float32)
    if library == "nerfacc":
        return volume._pick_backend("nerfacc", device, estimator=object())
    return mesh._pick_backend("nvdiffrast", device)


def backend_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, backends.BackendWarning)]


def assert_falls_back_once(library: str, why: str, fix: str):
    """auto takes torch twice, with exactly one warning line naming library, why and fix; forcing raises."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert picks()[library] == "torch"
        assert picks()[library] == "torch"
    lines = [m for m in backend_warnings(record) if m.startswith(library)]
    assert len(lines) == 1, lines
    assert "\n" not in lines[0] and why in lines[0] and fix in lines[0] and "torch" in lines[0], lines[0]
    with pytest.raises(RuntimeError) as e:
        forced(library)
    assert library in str(e.value) and why in str(e.value) and fix in str(e.value)
    return lines[0]


# ------------------------------------------------------------------------------------------------
# each library missing, failing to build, or failing to load


@pytest.mark.parametrize("library", PACKAGES)
def test_a_library_that_does_not_import_falls_back_to_torch(library, monkeypatch):
    top = backends._MODULE_OF[library]
    monkeypatch.setitem(sys.modules, top, None)  # `import top` raises ImportError(name=top), as when not installed
    line = assert_falls_back_once(
        library, f"ModuleNotFoundError: import of {top} halted", "pip install 'dream3d[cuda]'"
    )
    assert library in line.split(":")[0]


@pytest.mark.parametrize("library", ["gsplat", "nerfacc"])
def test_a_cuda_build_that_raises_falls_back_to_torch(library, tmp_path, monkeypatch):
    # the package imports; its CUDA extension module raises while building, as torch's JIT does
    fake_package(
        tmp_path,
        monkeypatch,
        {
            f"{library}/__init__.py": "",
            f"{library}/cuda/__init__.py": "",
            f"{library}/cuda/_backend.py": f"raise RuntimeError(\"Error building extension '{library}_cuda'\\nnvcc fatal: unsupported gpu architecture 'compute_100'\")\n",
        },
    )
    assert backends.import_error(library) == ""  # importable for pure-Python use ...
    line = assert_falls_back_once(
        library, f"RuntimeError: Error building extension '{library}_cuda'", "TORCH_CUDA_ARCH_LIST"
    )
    assert "nvcc fatal" not in line  # ... the short text is the first line only
    assert backends.loaded(library).ok is False


@pytest.mark.parametrize("library", ["gsplat", "nerfacc"])
def test_no_cuda_toolkit_falls_back_to_torch(library, tmp_path, monkeypatch):
    # gsplat and nerfacc print "No CUDA toolkit found" and leave _C None instead of raising
    fake_package(
        tmp_path,
        monkeypatch,
        {
            f"{library}/__init__.py": "",
            f"{library}/cuda/__init__.py": "",
            f"{library}/cuda/_backend.py": "_C = None\n",
        },
    )
    assert_falls_back_once(
        library, "no CUDA toolkit (nvcc)", "install the CUDA toolkit with nvcc for torch's CUDA 13.0"
    )


def test_a_cpu_build_of_torch_is_named_as_the_cause(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setitem(backends._LOADERS, "gsplat", lambda device: torch.zeros(1, device=device))
    assert_falls_back_once("gsplat", "", "is a CPU build: install a CUDA build of torch")


def test_nvdiffrast_context_that_cannot_find_its_plugin_falls_back_to_torch(tmp_path, monkeypatch):
    plugin = "nvdiffrast_plugin_0_3_3_1_torch2_11_0_cu130"
    fake_package(
        tmp_path,
        monkeypatch,
        {
            "nvdiffrast/__init__.py": "__version__ = '0.3.3.1'\n",
            "nvdiffrast/torch/__init__.py": (
                "class RasterizeCudaContext:\n"
                "    def __init__(self, device=None):\n"
                f"        raise ModuleNotFoundError(\"No module named '{plugin}'\", name='{plugin}')\n"
            ),
        },
    )
    line = assert_falls_back_once(
        "nvdiffrast", f"ModuleNotFoundError: No module named '{plugin}'", "TORCH_CUDA_ARCH_LIST"
    )
    assert "mesh renderer" in line
    with pytest.raises(RuntimeError, match="nvdiffrast"):
        backends.nvdiffrast_context(CUDA)


def test_one_failure_leaves_the_other_libraries_alone(monkeypatch):
    calls = []

    def fine(device):
        calls.append(device)

    def broken(device):
        raise OSError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setitem(backends._LOADERS, "gsplat", broken)
    monkeypatch.setitem(backends._LOADERS, "nerfacc", fine)
    monkeypatch.setitem(backends._LOADERS, "nvdiffrast", fine)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert picks() == {"gsplat": "torch", "nerfacc": "nerfacc", "nvdiffrast": "nvdiffrast"}
        assert picks() == {"gsplat": "torch", "nerfacc": "nerfacc", "nvdiffrast": "nvdiffrast"}
    assert len(calls) == 2  # loaded once per library per process, not per pick
    (line,) = backend_warnings(record)
    assert line.startswith("gsplat could not be loaded") and "OSError: libcudart.so.13" in line
    forced("nerfacc")  # a library that loads may be forced


def test_without_cuda_nothing_is_loaded_and_nothing_warns(monkeypatch):
    def must_not_run(device):
        raise AssertionError("a CPU pick must not load a CUDA library")

    for lib in PACKAGES:
        monkeypatch.setitem(backends._LOADERS, lib, must_not_run)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert picks(torch.device("cpu")) == {lib: "torch" for lib in PACKAGES}
    assert backend_warnings(record) == []
    for lib in PACKAGES:
        with pytest.raises(RuntimeError, match="CUDA"):
            forced(lib, torch.device("cpu"))


def test_nerfacc_imports_for_the_dense_helpers_even_when_its_kernels_fail(tmp_path, monkeypatch):
    # the CPU question (does it import?) and the CUDA one (do its kernels load?) are separate
    monkeypatch.setitem(
        backends._LOADERS,
        "nerfacc",
        lambda device: (_ for _ in ()).throw(RuntimeError("Error building extension 'nerfacc_cuda'")),
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert volume.nerfacc_available(torch.device("cpu")) is True
        assert volume.nerfacc_available(CUDA) is False
    t = torch.linspace(0, 1, 9)[None].expand(2, 9)
    sig = torch.rand(2, 8)
    w, _, _ = volume.composite_dense(t[:, :-1], t[:, 1:], sig, use_nerfacc=True)
    torch.testing.assert_close(w, volume.composite_dense(t[:, :-1], t[:, 1:], sig, use_nerfacc=False)[0])


def test_a_nerfacc_that_does_not_import_leaves_the_dense_path_its_own_code(monkeypatch):
    monkeypatch.setitem(sys.modules, "nerfacc", None)
    assert volume._nerfacc() is None and volume.nerfacc_available(torch.device("cpu")) is False
    with pytest.raises(RuntimeError, match="needs nerfacc"):
        volume.composite_dense(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), use_nerfacc=True)


# ------------------------------------------------------------------------------------------------
# nvdiffrast's plugin is found after its build


def fake_build(monkeypatch, built: list):
    """torch.utils.cpp_extension.load that compiles nothing: it writes the plugin (a Python module with the
    class nvdiffrast's context wants) into the build folder and loads it the way torch does, by file spec,
    without registering it in sys.modules (what a pybind11 3, multi-phase-init module gets)."""
    from torch.utils import cpp_extension

    def load(name, sources, **kwargs):
        missing = [s for s in sources if not os.path.exists(s)]
        assert not missing, missing  # the real sources, named as the real ops.py names them
        folder = cpp_extension._get_build_directory(name, False)
        path = os.path.join(folder, name + ".py")
        with open(path, "w") as f:
            f.write(
                "class RasterizeCRStateWrapper:\n    def __init__(self, device_idx):\n        self.device_idx = device_idx\n"
            )
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        built.append(name)
        return module

    monkeypatch.setattr(cpp_extension, "load", load)
    # a CPU torch cannot enter a CUDA device; the context only needs the device's index
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_nvdiffrast_plugin_is_found_after_its_build(tmp_path, monkeypatch, request):
    ops = pytest.importorskip("nvdiffrast.torch.ops")  # the real diffrp-nvdiffrast (a test dependency)
    import nvdiffrast

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(ops, "_cached_plugin", {})
    monkeypatch.setattr(sys, "path", list(sys.path))
    plugin = ops.sanitize_name(f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}")
    request.addfinalizer(lambda: sys.modules.pop(plugin, None))
    built = []
    fake_build(monkeypatch, built)

    # nvdiffrast alone: the plugin builds, then its import by name fails (the GPU run's error)
    with pytest.raises(ModuleNotFoundError, match=f"No module named '{plugin}'"):
        ops.RasterizeCudaContext(device=CUDA)
    assert built == [plugin]

    # through backends: the build folder is on sys.path, so the same import finds the plugin
    assert backends.nvdiffrast_plugin_dir() == str(tmp_path / "ext" / plugin)
    assert backends.load("nvdiffrast", CUDA).ok, backends.load("nvdiffrast", CUDA).error
    ctx = backends.nvdiffrast_context(CUDA)
    assert isinstance(ctx, ops.RasterizeCudaContext) and ctx.cpp_wrapper.device_idx == 0
    assert backends.nvdiffrast_plugin_dir() in sys.path and ops._cached_plugin[False] is sys.modules[plugin]
    assert mesh._pick_backend("auto", CUDA) == "nvdiffrast" and mesh._nvdiffrast_context(CUDA) is ctx
    assert built == [plugin, plugin]  # built once more here (the fake writes no .so), then cached by nvdiffrast
    mesh._nvdiffrast_context(CUDA)
    assert len(built) == 2


# ------------------------------------------------------------------------------------------------
# dream3d env --build: what it reports per library, and its parity checks


def test_env_build_reports_pass_fail_why_and_fix_per_library(monkeypatch, capsys):
    from dream3d import cli, env

    log = "Error building extension 'gsplat_cuda': [1/9] nvcc ...\nFAILED: rasterize.cuda.o\nnvcc fatal : Unsupported gpu architecture 'compute_100'"
    monkeypatch.setitem(backends._LOADERS, "gsplat", lambda device: (_ for _ in ()).throw(RuntimeError(log)))
    monkeypatch.setitem(backends._LOADERS, "nerfacc", lambda device: None)
    monkeypatch.setitem(backends._LOADERS, "nvdiffrast", lambda device: None)
    monkeypatch.setitem(env.PARITY, "nerfacc", lambda device: env.Parity("nerfacc", True, 3e-6, 1e-3, 0.25, "a blob"))

    def crash(device):
        raise RuntimeError(
            "CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors ..."
        )

    monkeypatch.setitem(env.PARITY, "nvdiffrast", crash)
    rows = {r["library"]: r for r in env.build_and_check(CUDA)}
    assert rows["gsplat"]["status"] == "fail" and "Error building extension 'gsplat_cuda'" in rows["gsplat"]["why"]
    assert "TORCH_CUDA_ARCH_LIST" in rows["gsplat"]["fix"]
    assert (
        rows["nerfacc"]["status"] == "pass"
        and rows["nerfacc"]["max_error"] == 3e-6
        and rows["nerfacc"]["seconds"] == 0.25
    )
    assert rows["nvdiffrast"]["status"] == "fail" and rows["nvdiffrast"]["why"].endswith(
        "no kernel image is available for execution on the device"
    )
    # the renderers then report what loaded; the CLI prints it all and exits non-zero
    assert backends.explain("gsplat", CUDA)[0] == "torch" and backends.explain("nerfacc", CUDA)[0] == "nerfacc"
    info = env.collect("cpu")
    info["build"] = list(rows.values())
    monkeypatch.setattr(env, "collect", lambda *a, **k: info)
    assert cli.main(["env", "--build"]) != 0
    out, err = capsys.readouterr()
    assert "  - nerfacc: pass, max |difference| 3.00e-06 (tolerance 1e-03) on a blob" in out
    assert (
        "  - gsplat: fail (could not be loaded: RuntimeError: Error building extension 'gsplat_cuda': [1/9] nvcc); fix: "
        in out
    )
    assert "      nvcc fatal : Unsupported gpu architecture 'compute_100'" in out  # the build's log follows
    assert "gsplat, nvdiffrast failed" in err


def test_parity_checks_pass_a_faithful_backend_and_fail_a_wrong_one(monkeypatch):
    # On CPU the torch renderers stand in for the CUDA kernels: faithful (error ~0), then off by 0.02.
    from dream3d import env

    off = {"by": 0.0}

    def fake_gsplat(*args):
        out = gaussians._rasterize_torch(*args)
        out.rgb = out.rgb + off["by"]
        return out

    def fake_nvdiffrast(xy, z, faces, H, W, near, far):
        r = mesh._raster_from_ids(mesh._zbuffer_torch(xy.detach(), z.detach(), faces, H, W, near), xy, z, faces)
        r.depth = r.depth + off["by"]
        return r

    monkeypatch.setattr(gaussians, "_pick_backend", lambda backend, device, dtype: backend)
    monkeypatch.setattr(gaussians, "_rasterize_gsplat", fake_gsplat)
    monkeypatch.setattr(mesh, "_pick_backend", lambda backend, device: backend)
    monkeypatch.setattr(mesh, "_rasterize_nvdiffrast", fake_nvdiffrast)
    cpu = torch.device("cpu")
    for check in (env.gsplat_parity, env.nvdiffrast_parity):
        good = check(cpu)
        assert good.passed and good.max_error < 1e-5, good
    off["by"] = 0.02
    for check in (env.gsplat_parity, env.nvdiffrast_parity):
        bad = check(cpu)
        assert not bad.passed and abs(bad.max_error - 0.02) < 1e-5, bad


@pytest.mark.cuda
@pytest.mark.parametrize("library", PACKAGES)
def test_cuda_library_loads_and_matches_torch(library):
    from dream3d import env

    loaded = backends.load(library, CUDA)
    assert loaded.ok, f"{loaded.error}; fix: {loaded.fix}"
    p = env.PARITY[library](CUDA)
    assert p.passed, p
