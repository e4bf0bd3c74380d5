"""Screenshot of the walkthrough notebook open in JupyterLab (the README's "Working in JupyterLab").

    python scripts/screenshot_lab.py                      # writes figures/jupyterlab_walkthrough.png
    python scripts/screenshot_lab.py --out /tmp/lab.png --width 1600 --height 1000

Starts JupyterLab as `make lab` does (JUPYTER_CONFIG_PATH=.jupyter: notebooks/ as the root, jupytext's
contents manager, .py files open as notebooks) on 127.0.0.1 with a random port and token, points
headless Chromium (Debian's `chromium` package: `apt-get install -y chromium`) at
`/lab/tree/00_walkthrough.py`, saves the screenshot and stops the server. Nothing in the repository
is written but the PNG (JupyterLab's workspace and runtime files go to a temporary folder). Not run by
CI or the tests: it needs Chromium.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", default="00_walkthrough.py", help="notebook to open (under notebooks/)")
    parser.add_argument("--out", default=str(REPO / "figures" / "jupyterlab_walkthrough.png"), help="PNG to write")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--wait", type=int, default=40, help="seconds of page time before the screenshot")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or "chromium", help="the Chromium executable")
    args = parser.parse_args(argv)

    port, token = free_port(), secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="rsdlib-lab-"))
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(REPO / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--LabApp.workspaces_dir={tmp / 'ws'}",
           f"--LabApp.user_settings_dir={tmp / 'settings'}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about Jupyter news?" box over the notebook
    server = subprocess.Popen(cmd, env=env, stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print((tmp / "server.log").read_text()[-3000:], file=sys.stderr)
                    raise SystemExit("JupyterLab did not start")
                time.sleep(0.5)
        out = Path(args.out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}/lab/tree/{args.notebook}?reset&token={token}"
        shot = [args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium'}",
                f"--window-size={args.width},{args.height}", f"--virtual-time-budget={args.wait * 1000}",
                f"--screenshot={out}", url]
        subprocess.run(shot, check=True, timeout=args.wait + 120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"wrote {out}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
