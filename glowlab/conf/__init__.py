"""The Hydra configs that ship inside the package: the apps' primary configs (``train.yaml``,
``eval.yaml``, ...) and the config groups (``model/``, ``data/``, ``trainer/``, ...)."""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent)
"""This folder, absolute: every app's ``config_path`` (user config dirs join the search path)."""
