"""pytest-netfault as a user gets it.  The wheel, installed into a clean
virtualenv outside the repository, runs the README's examples in the three
styles and container tests (the harness's own build context, one from an ini
directory, one given as a path) from a directory with no conftest; the sdist
carries the whole project and its tests run from it.  (~1-2 min: it builds
and installs; it runs in CI with the other tests.)"""

import hashlib
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import docker
import pytest

from harness._names import lock_path

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_block(first_line: str | None = None) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    return blocks[0] if first_line is None else \
        next(b for b in blocks if b.startswith(first_line))


def sh(*argv, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    run = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0, f"{argv} exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    return run


def build(kind: str, out: pathlib.Path) -> pathlib.Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("python package 'build' is not installed (pip install -e '.[dev]')")
    sh(sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "-o", out, ROOT)
    (path,) = out.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    return path


CONTAINERS = '''
import pathlib
import pytest
import harness

async def echo(client, server):
    conn = await client.connect(server, 7)
    await conn.send(b"hello")
    assert (await conn.recv()).value == b"hello"

async def test_the_packaged_build_context(lab):
    client = await lab.host("client")
    await echo(client, await lab.container("server", image="echo", ready=harness.listening(7)))

async def test_a_build_context_from_the_ini(lab):
    client = await lab.host("client")
    await echo(client, await lab.container("server", image="mine", ready=harness.listening(7)))

def test_a_build_context_given_as_a_path(lab):
    client = lab.host("client")
    server = lab.container("server", image="./contexts/mine", ready=harness.listening(7))
    conn = client.connect(server, 7)
    conn.send(b"hi")
    assert conn.recv().value == b"hi"
'''


@pytest.mark.requires("docker")
def test_the_wheel_in_a_clean_venv_runs_the_readme_and_containers(tmp_path):
    wheel = build("wheel", tmp_path / "dist")
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    sh(venv / "bin/pip", "install", "-q", "--disable-pip-version-check", wheel,
       "pytest-asyncio", timeout=900)
    py = venv / "bin/python"
    where = sh(py, "-c", "import harness._docker as d; print(d.CONTAINERS_DIR)",
               cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)) and (pathlib.Path(where) / "echo/Dockerfile").is_file()
    meta = sh(py, "-c", "from importlib.metadata import metadata as m; d = m('pytest-netfault');"
              "print(d['License-Expression'], d['Description-Content-Type'])").stdout
    assert meta.split() == ["MIT", "text/markdown"]

    suite = tmp_path / "suite"                  # a user's project: no conftest, no harness
    (suite / "contexts").mkdir(parents=True)
    shutil.copytree(ROOT / "containers/echo", suite / "contexts/mine")
    (suite / "pytest.ini").write_text("[pytest]\nharness_containers = contexts\n")
    (suite / "test_trio_style.py").write_text(readme_block())
    (suite / "test_asyncio_style.py").write_text(readme_block("# asyncio"))
    (suite / "test_sync_style.py").write_text(readme_block("# sync"))
    (suite / "test_containers.py").write_text(CONTAINERS)
    try:
        run = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                              "ignore::DeprecationWarning"], cwd=suite, capture_output=True,
                             text=True, timeout=900)
    finally:   # the image of ./contexts/mine is named after this run's path: not reused
        path = str((suite / "contexts/mine").resolve())
        image = f"mine-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        remove_images(f"harness/{image}")
        lock = pathlib.Path(lock_path(f"image-{image}"))
        built_under_the_lock = lock.exists()
        lock.unlink(missing_ok=True)
    assert run.returncode == 0 and "9 passed" in run.stdout, run.stdout + run.stderr
    # the build's lock is with the harness's other locks (it was one more file
    # in /tmp per image name, and 105 had piled up from this test)
    assert built_under_the_lock
    assert not (pathlib.Path(tempfile.gettempdir()) / f"harness-image-{image}.lock").exists()


def remove_images(repository: str) -> None:
    client = docker.from_env()
    try:
        for image in client.images.list(name=repository):
            client.images.remove(image.id, force=True)
    finally:
        client.close()


def test_doctor_without_a_daemon_says_how_to_start_one_not_a_repo_script(tmp_path):
    """From outside a checkout (as a wheel user) no .ci/ path is suggested."""
    wheel = build("wheel", tmp_path / "dist")
    site = tmp_path / "site"
    sh(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel)
    env = {"PYTHONPATH": f"{site}:{':'.join(p for p in sys.path if 'site-packages' in p)}",
           "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock", "PATH": "/usr/bin:/bin"}
    code = "import harness._docker as d; print(d.daemon_unavailable_reason())"
    reason = sh(sys.executable, "-c", code, cwd=tmp_path, env=env).stdout
    assert "no docker daemon answers at unix://" in reason
    assert "systemctl start docker" in reason and ".ci/dockerd.sh" not in reason, reason


def test_the_sdist_is_the_whole_project_and_its_tests_run(tmp_path):
    sdist = build("sdist", tmp_path / "dist")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "src", filter="data")
    for member in ("LICENSE", "README.md", "containers/echo/Dockerfile",
                   "containers/redis/build-rootfs.sh", "cases/conftest.py", "tests/helpers.py",
                   "tests/rootstate.py", "bench/_floor.py", "conftest.py", "setup.py"):
        assert member in names, member
    (src,) = (tmp_path / "src").iterdir()
    assert sh(sys.executable, "-c", "import harness; print(harness.__file__)",
              cwd=src).stdout.startswith(str(src))     # the sdist's code, not ours
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_undo.py", "tests/test_public_surface.py",
                          "tests/test_capture_frames.py"], cwd=src, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and " passed" in run.stdout and "failed" not in run.stdout, \
        run.stdout + run.stderr
