"""Interactive use (`make lab`): the repository's Jupyter configuration, checked on a real server.

A Jupyter server started the way `make lab` starts it (JUPYTER_CONFIG_PATH=.jupyter) on localhost, with
no browser, a free port and a token, serves a jupytext `.py` notebook as a notebook, saves it back to
the same bytes without making an `.ipynb`, and runs a smoke-profile notebook in one of its kernels
(over the server's kernel websocket, as JupyterLab does). The server works on a copy of notebooks/ and
writes results into a temporary folder; it is stopped in a `finally`, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rsdlib import paths, reproduce

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_walkthrough"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Jupyter server (JupyterLab's) on 127.0.0.1 with the repository's configuration."""

    def __init__(self, root: Path, env: dict[str, str], log: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}"]
        if os.geteuid() == 0:  # containers and CI run as root
            cmd.append("--allow-root")
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict:
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else {}

    def wait_ready(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                self.request("GET", "/api/status", timeout=5)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"no answer from the server in {seconds} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


def run_cells(server: Server, kernel_id: str, cells: list[str], timeout: float) -> list[dict]:
    """Execute code cells one by one in a server kernel over its websocket; the error messages, if any."""
    import websocket

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?token={server.token}", timeout=timeout)
    session, errors = uuid.uuid4().hex, []
    deadline = time.monotonic() + timeout
    try:
        for code in cells:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request",
                           "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            while True:  # until the kernel is idle again after this request
                ws.settimeout(max(1.0, deadline - time.monotonic()))
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "error":
                    errors.append(msg["content"])
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            if errors or time.monotonic() > deadline:
                break
    finally:
        ws.close()
    return errors


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(REPO / ".jupyter"), "PYTHONPATH": str(REPO),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "RSDLIB_RESULTS": str(root / "results"),
           "RSDLIB_FIGURES": str(root / "figures"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    server = Server(root / "notebooks", env, root / "server.log")
    try:
        server.wait_ready()
        yield server, root
    finally:
        server.stop()


def test_the_repository_config_serves_the_notebooks_folder_with_jupytext():
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("jupyter_server_config.py", path=str(REPO / ".jupyter")).load_config()
    assert config.ServerApp.root_dir == str(REPO / "notebooks")
    assert "jupytext" in config.ServerApp.contents_manager_class
    overrides = json.loads((REPO / ".jupyter" / "labconfig" / "default_setting_overrides.json").read_text())
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
    assert "JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter $(BIN)/jupyter lab" in (REPO / "Makefile").read_text()


def test_a_py_notebook_opens_as_a_notebook_and_saves_back_to_the_py(lab):
    server, root = lab
    path = root / "notebooks" / f"{NOTEBOOK}.py"
    before = path.read_bytes()
    model = server.request("GET", f"/api/contents/{NOTEBOOK}.py")
    assert model["type"] == "notebook" and model["format"] == "json"
    cells = model["content"]["cells"]
    assert cells[0]["cell_type"] == "markdown" and any("parameters" in c["metadata"].get("tags", []) for c in cells)
    assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"
    # JupyterLab opens .py files with the Jupytext Notebook viewer (the repository's settings override)
    settings = server.request("GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    assert settings["schema"]["properties"]["defaultViewers"]["default"].get("python") == "Jupytext Notebook"
    # saving the unchanged notebook writes the same .py, and no .ipynb appears
    saved = server.request("PUT", f"/api/contents/{NOTEBOOK}.py",
                           {"type": "notebook", "format": "json", "content": model["content"]})
    assert saved["type"] == "notebook"
    assert path.read_bytes() == before
    assert not list((root / "notebooks").rglob("*.ipynb"))


def test_a_smoke_notebook_runs_in_a_kernel_of_the_server(lab):
    server, root = lab
    cells = server.request("GET", f"/api/contents/{NOTEBOOK}.py")["content"]["cells"]
    code = []
    for cell in cells:  # the smoke parameters go right after the parameters cell, as papermill puts them
        if cell["cell_type"] == "code":
            code.append(cell["source"])
            if "parameters" in cell["metadata"].get("tags", []):
                code.append("\n".join(f"{k} = {v!r}" for k, v in reproduce.load_params("smoke", NOTEBOOK).items()))
    assert any(line.startswith("profile = 'smoke'") for c in code for line in c.splitlines())
    kernel = server.request("POST", "/api/kernels", {"name": "python3"})
    try:
        errors = run_cells(server, kernel["id"], code, timeout=420)
    finally:
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    for ext in ("png", "pdf", "md", "csv"):
        assert (root / "figures" / "smoke" / f"walkthrough.{ext}").stat().st_size > 0


# ----------------------------------------------------------------------------------------------
# A notebook run by hand before its inputs exist
# ----------------------------------------------------------------------------------------------
def test_a_missing_input_is_one_line_naming_the_notebook_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path))
    with pytest.raises(paths.MissingInputError) as err:
        paths.input_file("demo", "analysis", "summary.json")
    msg = str(err.value)
    assert msg == (f"{tmp_path / 'demo' / 'analysis' / 'summary.json'} is missing: notebook 20_trace_analysis makes it "
                   "(run it first, or `rsdlib reproduce --profile demo --only 20_trace_analysis`)")
    assert err.value._render_traceback_() == [f"MissingInputError: {msg}"]  # what Jupyter shows: one line
    (tmp_path / "demo" / "analysis").mkdir(parents=True)
    (tmp_path / "demo" / "analysis" / "summary.json").write_text("{}")
    assert paths.input_file("demo", "analysis", "summary.json") == tmp_path / "demo" / "analysis" / "summary.json"


# stage notebooks whose library stage reads the earlier results: notebook -> (module, the call in the notebook)
STAGE_READERS = {"20_trace_analysis": ("rsdlib.analysis", "run_analysis"),
                 "30_train": ("rsdlib.train", "check_train_params"),
                 "35_multistep": ("rsdlib.multistep", "check_multistep_params"),
                 "40_evaluate": ("rsdlib.evaluate", "check_eval_params")}
READERS = [p for p in sorted((REPO / "notebooks").glob("*.py")) if p.stem not in (
    "00_walkthrough", "10_generate_traces", "fig1_overview", "fig4_cross_model", *STAGE_READERS)]


@pytest.mark.parametrize("path", READERS, ids=lambda p: p.stem)
def test_notebooks_read_earlier_results_through_input_file(path):
    """Every notebook that needs an earlier notebook's results reads them with paths.input_file (directly
    or through tables.load_evaluation), never with a hand-made path that fails deep inside."""
    text = path.read_text()
    assert "paths.input_file(profile" in text or "load_evaluation(profile)" in text
    assert "is missing: run notebook" not in text


@pytest.mark.parametrize("name", sorted(STAGE_READERS))
def test_stage_notebooks_read_earlier_results_through_input_file(name, tmp_path, monkeypatch):
    """The stage notebooks call a library stage that reads notebook 10's results with paths.input_file:
    run before them, it stops with the line naming notebook 10."""
    from importlib import import_module

    from rsdlib import paths, reproduce

    module, call = STAGE_READERS[name]
    assert f"{call}(params)" in (REPO / "notebooks" / f"{name}.py").read_text()
    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path))
    with pytest.raises(paths.MissingInputError, match="traces/manifest.json is missing: notebook 10_generate_traces"):
        getattr(import_module(module), call)(reproduce.resolved_params("smoke", name))


def test_a_notebook_run_by_hand_before_its_inputs_exist_says_which_notebook_makes_them(tmp_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("RSDLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RSDLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = jupytext.read(REPO / "notebooks" / "tab6_trace_lengths.py")  # as it is: the demo's defaults
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1, errors
    line = errors[0]["traceback"][0]
    assert "analysis/summary.json is missing: notebook 20_trace_analysis makes it" in line
    assert "rsdlib reproduce --profile demo --only 20_trace_analysis" in line


NOTEBOOK_FILES = sorted((REPO / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_no_notebook_header_carries_a_version(path):
    """No `jupytext_version` / `format_version` (or any version) line: the file does not depend on the tool."""
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n")
    header = text.split("\n# ---\n", 1)[0]
    assert "version" not in header.lower(), header


def test_a_save_through_the_installed_jupytext_writes_the_same_bytes(tmp_path):
    """Jupyter's save path (jupytext's contents manager, the repository's jupytext.toml) rewrites every
    notebook byte for byte with whichever jupytext is installed, and adds no version line."""
    import jupytext

    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    manager = jupytext.TextFileContentsManager(root_dir=str(tmp_path / "notebooks"))
    changed = []
    for path in NOTEBOOK_FILES:
        model = manager.get(path.name)
        assert model["type"] == "notebook"
        manager.save(model, path.name)
        if (tmp_path / "notebooks" / path.name).read_bytes() != path.read_bytes():
            changed.append(path.name)
    assert changed == [], f"jupytext {jupytext.__version__} rewrote {changed}"
