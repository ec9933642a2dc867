"""dream3d: text (or one image) to a textured 3D mesh by score distillation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dream3d")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown (not installed)"
