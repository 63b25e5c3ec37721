"""The package list: every package under the four top-level folders, installed as ``hilbed.<folder>...``.

(The folder -> import-name mapping itself is ``[tool.setuptools.package-dir]`` in pyproject.toml.)
"""

from setuptools import find_packages, setup

FOLDERS = ("orchestrator", "nodes", "analysis", "firmware_bridge")

setup(packages=["hilbed"] + [f"hilbed.{top}" for top in FOLDERS]
      + [f"hilbed.{top}.{sub}" for top in FOLDERS for sub in find_packages(top)])
