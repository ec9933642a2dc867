"""Where the shipped assets live. ``DREAM3D_ASSETS`` overrides the folder (for a non-editable install)."""
import os

ASSETS_DIR = os.environ.get("DREAM3D_ASSETS", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "assets")))
EMBEDDED_PRIOR = os.path.join(ASSETS_DIR, "prior")
WORLD_CLASSIFIER = os.path.join(ASSETS_DIR, "world_classifier")
