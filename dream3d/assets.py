"""Where the shipped data lives: the presets (``configs/``), the embedded prior and the world classifier
(``assets/``). Every path to them comes from here.

An installed wheel carries both folders inside the package, as ``dream3d/_data/configs`` and
``dream3d/_data/assets`` (setup.py maps the top-level folders there at build time); a source checkout or an
editable install reads the top-level folders. ``DREAM3D_ASSETS`` overrides the assets folder (one that holds
``prior/``, ``world_classifier/`` and, once trained, ``zero123/``)."""

import os
from importlib.resources import files
from pathlib import Path


def _shipped(name: str) -> str:
    bundled = files(__package__) / "_data" / name
    if bundled.is_dir():  # an installed wheel
        return str(bundled)
    return str(Path(__file__).resolve().parent.parent / name)  # the repository: a checkout or an editable install


CONFIG_DIR = _shipped("configs")
ASSETS_DIR = os.path.abspath(os.environ.get("DREAM3D_ASSETS") or _shipped("assets"))
EMBEDDED_PRIOR = os.path.join(ASSETS_DIR, "prior")
EMBEDDED_ZERO123 = os.path.join(
    ASSETS_DIR, "zero123"
)  # the view-conditioned prior (dream3d prior train --kind zero123)
WORLD_CLASSIFIER = os.path.join(ASSETS_DIR, "world_classifier")
