"""Start and stop a real ``tritonserver`` on a model repository, on loopback only.

Used by the tests and benchmarks, and usable as ``with TritonServer(repo) as srv: srv.http_url``.
The server comes from NVIDIA's ``nvidia-pytriton`` wheel (``pip install 'adrt[triton]'``), which
ships a Triton build with the Python backend, or from a Triton install (``/opt/tritonserver``, or
``ADRT_TRITONSERVER`` naming its ``bin/tritonserver``).

The Python backend runs model.py in a stub process that embeds one Python version's libpython; the
wheel ships one stub per version. This module lays out a backend folder with the stub for the
Python that is to run the models (this one by default), and starts the server with that Python's
folder first on PATH (the stub finds its environment, site-packages and all, from the ``python3``
there) and its libpython on LD_LIBRARY_PATH.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from adrt.errors import ServingError

PIP_EXTRA = "pip install 'adrt[triton]'"


@dataclass(frozen=True)
class TritonInstall:
    """Where a Triton build's pieces are."""

    binary: Path
    lib_dirs: tuple
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stubs: Path | None  # folder with <major>.<minor>/triton_python_backend_stub (the pytriton wheel)
    origin: str

    def stub_for(self, version: str) -> Path:
        """The Python-backend stub for Python ``version`` ("3.11")."""
        if self.stubs is not None:
            stub = self.stubs / version / "triton_python_backend_stub"
            if stub.is_file():
                return stub
            have = sorted(p.name for p in self.stubs.iterdir() if (p / "triton_python_backend_stub").is_file())
            raise ServingError(f"{self.origin} has no Python-backend stub for Python {version} (it has: "
                               f"{', '.join(have) or 'none'}); run the models under one of those Pythons")
        stub = self.python_backend / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServingError(f"{self.python_backend}: no triton_python_backend_stub")
        return stub


def find_triton() -> TritonInstall:
    """The tritonserver to use: ``ADRT_TRITONSERVER``, else the nvidia-pytriton wheel, else
    /opt/tritonserver. Raises ServingError saying how to get one."""
    env = os.environ.get("ADRT_TRITONSERVER")
    if env:
        return _from_prefix(Path(env).resolve().parent.parent, f"ADRT_TRITONSERVER={env}")
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0])
        dist = root / "tritonserver"
        binary = dist / "bin" / "tritonserver"
        if binary.is_file():
            libs = root.parent / "nvidia_pytriton.libs"
            return TritonInstall(binary, (libs,) if libs.is_dir() else (), dist / "backends" / "python",
                                 dist / "python_backend_stubs", f"nvidia-pytriton ({root})")
    opt = Path("/opt/tritonserver")
    if (opt / "bin" / "tritonserver").is_file():
        return _from_prefix(opt, str(opt))
    raise ServingError(f"no tritonserver found: {PIP_EXTRA} (nvidia-pytriton ships one), or set ADRT_TRITONSERVER "
                       f"to a Triton install's bin/tritonserver")


def _from_prefix(prefix: Path, origin: str) -> TritonInstall:
    binary = prefix / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServingError(f"{origin}: {binary} does not exist")
    libs = tuple(p for p in (prefix / "lib",) if p.is_dir())
    return TritonInstall(binary, libs, prefix / "backends" / "python", None, origin)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_facts(python: str) -> dict:
    """Version, libpython folder and whether adrt.runtime imports, for the Python at ``python``."""
    code = ("import json, sys, sysconfig\nok = ''\ntry:\n    import numpy, adrt.runtime\nexcept Exception as e:\n"
            "    ok = repr(e)\nprint(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
            "'libdir': sysconfig.get_config_var('LIBDIR'), "
            "'shared': bool(sysconfig.get_config_var('Py_ENABLE_SHARED')), 'import_error': ok}))")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServingError(f"cannot run the Python for the models ({python}): {e}") from None
    if r.returncode != 0:
        raise ServingError(f"cannot run the Python for the models ({python}): {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


def _preexec() -> None:  # pragma: no cover - runs in the child
    # Linux: the server gets SIGTERM when the process that started it dies, so no test or
    # benchmark leaves a server behind.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class TritonServer:
    """A ``tritonserver`` serving ``repo`` on 127.0.0.1 (HTTP, gRPC and metrics on free ports).

    ``python``: the interpreter whose environment runs Python-backend models (adrt.runtime must
    import there); ``model_control``: Triton's ``--model-control-mode`` (``none``, ``poll`` with
    ``poll_secs``, ``explicit``).
    """

    def __init__(self, repo: str | os.PathLike, *, python: str = sys.executable, install: TritonInstall | None = None,
                 model_control: str = "none", poll_secs: int = 2, log_verbose: int = 0, exit_timeout: int = 10,
                 extra_args: tuple = ()):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ServingError(f"{repo}: no such model repository folder")
        if model_control not in ("none", "poll", "explicit"):
            raise ServingError(f"model_control {model_control!r}: expected none, poll or explicit")
        self.install = install or find_triton()
        self.python = python
        self.model_control, self.poll_secs, self.log_verbose = model_control, poll_secs, log_verbose
        # Triton waits this long on SIGINT for open client connections before it exits.
        self.exit_timeout = exit_timeout
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0

    # --- set-up -----------------------------------------------------------------------------

    def _backend_dir(self, facts: dict) -> Path:
        """backends/python with the stub for the models' Python, beside a copy of the backend."""
        src = self.install.python_backend
        lib = src / "libtriton_python.so"
        if not lib.is_file():
            raise ServingError(f"{self.install.origin}: no Python backend ({lib} missing)")
        dst = self.workdir / "backends" / "python"
        dst.mkdir(parents=True)
        for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
            if (src / f).is_file():
                shutil.copy2(src / f, dst / f)
        shutil.copy2(self.install.stub_for(facts["version"]), dst / "triton_python_backend_stub")
        return dst.parent

    def _env(self, facts: dict) -> dict:
        env = dict(os.environ)
        libdirs = [str(d) for d in self.install.lib_dirs]
        if facts["shared"] and facts["libdir"]:
            libdirs.insert(0, facts["libdir"])
        else:
            name = f"libpython{facts['version']}.so.1.0"
            if ctypes.util.find_library(f"python{facts['version']}") is None:
                raise ServingError(f"the Python-backend stub links {name}, which {self.python} (not built with "
                                   f"--enable-shared) does not provide and the system lacks")
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
        # The stub's embedded Python finds its prefix (and a virtual environment's pyvenv.cfg) from
        # the python3 first on PATH: put the models' Python there. Keep the folder as given, not
        # resolved: a venv's bin/python3 is a symlink, and resolving it would lose the venv.
        bindir = os.path.dirname(os.path.abspath(self.python))
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        return env

    def command(self, backend_dir: Path) -> list:
        args = [str(self.install.binary), f"--model-repository={self.repo}", f"--backend-directory={backend_dir}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--strict-readiness=true", "--exit-on-error=true",
                f"--model-control-mode={self.model_control}", f"--log-verbose={self.log_verbose}",
                f"--exit-timeout-secs={self.exit_timeout}"]
        if self.model_control == "poll":
            args.append(f"--repository-poll-secs={self.poll_secs}")
        if self.model_control == "explicit":
            args.append("--load-model=*")
        return args + list(self.extra_args)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Start the server and wait until it and every model are ready; raises ServingError with
        the end of the server's log when it exits or does not become ready in ``timeout`` s."""
        if self.proc is not None:
            raise ServingError("this TritonServer is already started")
        facts = python_facts(self.python)
        if facts["import_error"]:
            raise ServingError(f"adrt.runtime does not import in {self.python} ({facts['import_error']}); the "
                               f"Python-backend models run there")
        self.workdir = Path(tempfile.mkdtemp(prefix="adrt-triton-"))
        try:
            backend_dir = self._backend_dir(facts)
            env = self._env(facts)
            for attempt in range(3):
                # A port picked free can be taken by someone else before Triton binds it: pick again.
                self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
                self.log_path = self.workdir / f"tritonserver{attempt}.log"
                with open(self.log_path, "wb") as log:
                    self.proc = subprocess.Popen(self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env, cwd=self.workdir,
                                                 preexec_fn=_preexec if sys.platform.startswith("linux") else None)
                try:
                    self._wait_ready(timeout)
                    break
                except ServingError:
                    if self.proc.poll() is None or "already in use" not in self.log_text() or attempt == 2:
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise ServingError(f"tritonserver exited with status {self.proc.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            if self.get("/v2/health/ready")[0] == 200:
                return
            time.sleep(0.2)
        raise ServingError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def get(self, path: str, timeout: float = 5.0) -> tuple:
        """(HTTP status, body) of a GET on the server's HTTP endpoint; status 0 when unreachable."""
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0, b""

    def wait_model(self, name: str, version: int | None = None, timeout: float = 60.0) -> None:
        """Wait until ``name`` (``version``) is ready, e.g. after a new version was added under polling."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.get(path)[0] == 200:
                return
            if self.proc is None or self.proc.poll() is not None:
                raise ServingError(f"tritonserver is not running:\n{self.log_tail()}")
            time.sleep(0.2)
        raise ServingError(f"model {name} version {version or 'latest'} not ready after {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_address(self) -> str:
        """host:port for tritonclient.http."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """host:port for tritonclient.grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (AttributeError, OSError):
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (Triton's graceful stop), then SIGKILL after ``timeout`` s; removes the work folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
