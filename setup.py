"""Packaging that pyproject.toml cannot say: the repository's top-level configs/ and assets/ folders travel in
the wheel as dream3d/_data/configs and dream3d/_data/assets (read through dream3d/assets.py), without a second
copy of the weights in git. Every folder under them is listed as a data-only package, with all its files."""
from setuptools import find_namespace_packages, find_packages, setup

DATA = {"dream3d._data.configs": "configs", "dream3d._data.assets": "assets"}
data_packages = [f"{name}.{sub}" for name, folder in DATA.items() for sub in find_namespace_packages(where=folder)]
data_packages += list(DATA)

setup(
    packages=find_packages(include=["dream3d*", "renderers*"]) + data_packages,
    package_dir=DATA,
    package_data={"dream3d": ["py.typed"], **{name: ["*"] for name in data_packages}},
)
