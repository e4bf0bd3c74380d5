"""JupyterLab for this repository (`make lab`): the notebooks folder as the root, jupytext's contents manager.

Jupyter reads this file when JUPYTER_CONFIG_PATH names this folder (the Makefile's `lab` target sets it).
The notebooks are jupytext percent-format `.py` files: jupytext's contents manager serves each one as a
notebook, and saving writes the `.py` back (no `.ipynb` is made; `notebooks/jupytext.toml` holds the
format). `labconfig/default_setting_overrides.json` beside this file makes "Jupytext Notebook" the
default viewer of Python files, so a double-click opens a notebook as a notebook.
"""

from pathlib import Path

c = get_config()  # noqa: F821 (defined by Jupyter when it loads this file)
c.ServerApp.root_dir = str(Path(__file__).resolve().parents[1] / "notebooks")
c.ServerApp.contents_manager_class = "jupytext.AsyncTextFileContentsManager"
