"""The side environment with MONAI Label 0.8.5 and a ``monailabel start_server`` process on 127.0.0.1, for
``scripts/check_monailabel.py``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

MONAI_LABEL = "monailabel==0.8.5"
# monailabel 0.8.5's declared dependencies (its wheel's METADATA) minus torchvision and sam2, with the pins it needs
# here, plus pydicom-seg's SimpleITK; installed under requirements.txt as constraints, so that torch, monai and numpy
# stay the bundle's
MONAI_LABEL_DEPENDENCIES = """
monai[fire,gdown,ignite,itk,lmdb,mlflow,nibabel,openslide,pillow,psutil,skimage,tensorboard,tqdm]
uvicorn>=0.29.0 pydantic>=2.7.0 pydantic-settings>=2.2.1 python-dotenv>=1.0.1 fastapi>=0.110.2
python-multipart>=0.0.9 httpx>=0.27.0 schedule>=1.2.1 dicomweb-client[gcp]==0.59.1 timeloop>=1.0.2
expiringdict>=1.2.2 expiring_dict>=1.1.0 cachetools>=5.3.3 watchdog>=4.0.0 pydicom==2.4.4 pynetdicom>=2.0.2,<3
pynrrd>=1.0.0 girder-client>=3.2.3 ninja>=1.11.1.1 einops>=0.7.0 pyyaml>=6.0.1 filelock>=3.11.0 passlib>=1.7.4
pyjwt>=2.8.0 bcrypt>=4.1.2 shapely>=2.0.4 requests>=2.31.0 requests-toolbelt>=1.0.0 urllib3>=2.2.1
scikit-learn scipy google-auth>=2.29.0 SimpleITK
""".split()
NUMPY_LT2_DEPENDENCIES = ("pydicom-seg>=0.4.1", "numpymaxflow>=0.0.7")  # declare numpy<2: installed --no-deps
TORCHVISION_STAND_IN = REPO_ROOT / "scripts" / "torchvision_stand_in.py"  # becomes torchvision/utils.py
BUNDLE_NAME = "lh_utanet"


class CheckError(Exception):
    """A check did not pass; the message says which and by how much."""


def repo_env() -> dict[str, str]:
    """The environment for this repository's commands: its own ``bundle`` and ``scripts`` first on the path (not
    those of an editable install of another checkout)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *([path] if path else [])])}


def run(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``; CheckError with the end of its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise CheckError(f"{' '.join(command[:6])} ... failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result


def venv_spec() -> str:
    requirements = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    return json.dumps([MONAI_LABEL, MONAI_LABEL_DEPENDENCIES, NUMPY_LT2_DEPENDENCIES, requirements])


def build_venv(venv: Path) -> Path:
    """The side environment's python, built unless ``venv`` already holds one of the same specification."""
    python, marker = venv / "bin" / "python", venv / "lh_utanet_spec.json"
    if python.is_file() and marker.is_file() and marker.read_text(encoding="utf-8") == venv_spec():
        print(f"environment: reusing {venv}")
        return python
    print(f"environment: building {venv} (torch first, then the bundle's requirements, then MONAI Label)", flush=True)
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    run([*pip, "torch==2.13.0"])
    run([*pip, "-r", str(REPO_ROOT / "requirements.txt")])
    run([*pip, "--no-deps", MONAI_LABEL, *NUMPY_LT2_DEPENDENCIES])
    run([*pip, "-c", str(REPO_ROOT / "requirements.txt"), *MONAI_LABEL_DEPENDENCIES])
    marker.write_text(venv_spec(), encoding="utf-8")
    return python


def torchvision_stand_in(folder: Path) -> Path:
    """``folder/torchvision/utils.py`` (the stand-in); returns ``folder``, for the server's PYTHONPATH."""
    package = folder / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    shutil.copy(TORCHVISION_STAND_IN, package / "utils.py")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def multipart(fields: dict[str, str], name: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and one file; returns it and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        for key, value in fields.items()
    ]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    head += "Content-Type: application/octet-stream\r\n\r\n"
    body = "".join(parts).encode() + head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Server:
    """``monailabel start_server`` in its own process group, stopped by that group's id."""

    def __init__(self, python: Path, app: Path, studies: Path, stubs: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), str(app.parent)]), "OMP_NUM_THREADS": "2"}
        command = [
            str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
            "--conf", "models", BUNDLE_NAME, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.log = log
        self.process = subprocess.Popen(
            command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        print(f"server: pid {self.process.pid} on {self.url}, log {log}", flush=True)

    def request(self, method: str, path: str, timeout: float = 60, **kwargs) -> bytes:
        request = urllib.request.Request(self.url + path, method=method, **kwargs)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def post_json(self, path: str, body: object = None, timeout: float = 600) -> object:
        """``POST path`` with a JSON body; the JSON answer."""
        data, headers = json.dumps(body if body is not None else {}).encode(), {"Content-Type": "application/json"}
        return json.loads(self.request("POST", path, timeout=timeout, data=data, headers=headers))

    def get_json(self, path: str, **query: object) -> object:
        return json.loads(self.request("GET", f"{path}?{urllib.parse.urlencode(query)}" if query else path))

    def wait_until_up(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CheckError(f"the server exited with {self.process.returncode}; log:\n{self.tail()}")
            try:
                return json.loads(self.request("GET", "/info/", timeout=5))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        raise CheckError(f"the server did not answer /info/ within {timeout:.0f} s; log:\n{self.tail()}")

    def running(self, task: str) -> bool:
        """Whether a background ``task`` (``scoring``, ``train``) runs: MONAI Label answers 404 to
        ``GET /{task}/?check_if_running=true`` when none does."""
        try:
            self.request("GET", f"/{task}/?check_if_running=true", timeout=10)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise
        return True

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        print(f"server: stopped (pid {self.process.pid}, exit {self.process.returncode})")
