"""Docker access for the harness.

This is the only module of the project that imports the ``docker`` SDK, and
it does so lazily, inside functions: ``import harness._docker`` is cheap and
works without the SDK installed.  Every function is synchronous (the caller
runs it in a worker thread) and turns SDK / daemon errors into
:class:`DockerError`.

Images are built locally, never pulled: ``containers/<name>/`` (next to the
``harness`` package) is a build context with a ``Dockerfile`` and optionally
an executable ``build-rootfs.sh`` following this protocol:

``build-rootfs.sh inputs``
    print, cheaply and deterministically, everything the rootfs depends on
    outside the context (package versions and checksums, a host binary's
    sha256, ...).
``build-rootfs.sh build OUTDIR``
    write the generated files (``rootfs.tar``) into ``OUTDIR``.

The image tag is ``harness/<name>:<hash>`` where the hash covers every file of
the context (path, executable bit, content) and the ``inputs`` output, so an
existing tag means the image is up to date and no build is done.  The build
runs in a temporary copy of the context: nothing is written to the work tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ._names import lock_path
from .errors import SetupError
from typing import Iterator

# The harness's own build contexts: inside the installed package (the wheel
# carries the repo's containers/ as harness/_containers), else the repo's.
_PACKAGED_DIR = Path(__file__).resolve().parent / "_containers"
CONTAINERS_DIR = _PACKAGED_DIR if _PACKAGED_DIR.is_dir() else \
    Path(__file__).resolve().parent.parent / "containers"
CONTEXTS_ENV = "HARNESS_CONTAINERS"
IMAGE_REPOSITORY_PREFIX = "harness/"
IMAGE_LABEL = "harness.image"
IMAGE_HASH_LABEL = "harness.image.hash"
BUILD_SCRIPT = "build-rootfs.sh"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

_HASH_SCHEME = b"harness-image-hash-v1\0"
_HASH_LENGTH = 20
_PING_TIMEOUT = 2.0
_API_TIMEOUT = 120.0
_INPUTS_TIMEOUT = 120.0
_ROOTFS_BUILD_TIMEOUT = 900.0
_LOG_TAIL_LINES = 40
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# what to do when no daemon answers (.ci/dockerd.sh exists only in a checkout)
_REPO_DOCKERD = Path(__file__).resolve().parent.parent / ".ci" / "dockerd.sh"
START_DAEMON = "start one: 'systemctl start docker', or 'dockerd &' as root" + (
    f" (or bash {_REPO_DOCKERD}: dockerd with every network feature off)"
    if _REPO_DOCKERD.is_file() else "")


class DockerError(SetupError):
    """A docker operation failed; carries the image/container involved and
    the daemon's own message when there is one."""

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        container: str | None = None,
        daemon_message: str | None = None,
    ) -> None:
        self.message = message
        self.image = image
        self.container = container
        self.daemon_message = daemon_message
        super().__init__(message)
        self.args = (message, image, container, daemon_message)

    def __str__(self) -> str:
        text = self.message
        about = [
            f"{kind} {value}"
            for kind, value in (("image", self.image), ("container", self.container))
            if value is not None and value not in self.message
        ]
        if about:
            text += f" ({', '.join(about)})"
        if self.daemon_message:
            text += f": docker daemon says: {self.daemon_message}"
        return text


@dataclasses.dataclass(frozen=True)
class Container:
    """A running container: ``pid`` is its main process on the host, so that
    ``/proc/<pid>/ns/net`` is its network namespace."""

    id: str
    name: str
    pid: int
    #: the json-file log driver's file ("" for another driver): the
    #: container's output, readable without asking the daemon
    log_path: str = ""


# --------------------------------------------------------------------------
# client and error translation


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def _import_docker():
    try:
        import docker  # noqa: PLC0415 (lazy on purpose)
    except ImportError as e:
        raise DockerError(
            "the docker SDK (python package 'docker') is not installed"
        ) from e
    return docker


_local = threading.local()


def _client():
    """One client per thread (the SDK's session is not documented as
    thread-safe); created on first use, API version negotiated."""
    client = getattr(_local, "client", None)
    if client is None:
        docker = _import_docker()
        try:
            client = docker.from_env(timeout=_API_TIMEOUT)
        except Exception as e:
            raise DockerError(
                f"no docker daemon answers at {_docker_host()} ({_first_line(e)}):"
                f" {START_DAEMON}"
            ) from e
        _local.client = client
    return client


def _daemon_message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        if isinstance(explanation, bytes):
            explanation = explanation.decode(errors="replace")
        return str(explanation).strip()
    return str(exc).strip() or type(exc).__name__


@contextlib.contextmanager
def _translated(
    what: str, *, image: str | None = None, container: str | None = None
) -> Iterator[None]:
    """Re-raise docker SDK / transport errors as DockerError."""
    try:
        yield
    except DockerError:
        raise
    except Exception as e:  # the SDK may be absent: match by module
        module = type(e).__module__ or ""
        # docker.errors.APIError is also a requests HTTPError (an OSError):
        # test for the SDK's own errors first.
        from_sdk = module.startswith("docker")
        transport = not from_sdk and (
            module.startswith(("requests", "urllib3")) or isinstance(e, OSError)
        )
        if transport:
            raise DockerError(
                f"{what}: no docker daemon answers at {_docker_host()}"
                f" ({_first_line(e)}): {START_DAEMON}",
                image=image,
                container=container,
            ) from e
        if from_sdk:
            if getattr(e, "response", None) is not None:  # the daemon answered
                raise DockerError(
                    what, image=image, container=container, daemon_message=_daemon_message(e)
                ) from e
            raise DockerError(
                f"{what}: {_daemon_message(e)}", image=image, container=container
            ) from e
        raise


def _is_not_found(exc: BaseException) -> bool:
    docker = _import_docker()
    return isinstance(exc, docker.errors.NotFound)


# --------------------------------------------------------------------------
# daemon


def daemon_unavailable_reason() -> str | None:
    """None when a docker daemon answers (within ~2 s), else why not."""
    try:
        docker = _import_docker()
    except DockerError as e:
        return str(e)
    host = _docker_host()
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=_PING_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - any failure means "unavailable"
        return f"no docker daemon answers at {host} ({_first_line(e)}): {START_DAEMON}"
    try:
        client.ping()
    except Exception as e:  # noqa: BLE001
        return f"no docker daemon answers at {host} ({_first_line(e)}): {START_DAEMON}"
    finally:
        client.close()
    return None


def _first_line(exc: BaseException) -> str:
    text = _daemon_message(exc)
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------
# images


_extra_dirs: list[tuple[Path, str]] = []   # (directory, where it came from)
_path_contexts: dict[str, Path] = {}       # name -> a context given to image= as a path


def add_context_dirs(dirs: list[str], where: str) -> None:
    """Search ``dirs`` (each holding ``<name>/Dockerfile``) before the
    harness's own build contexts (the plugin passes ini harness_containers)."""
    for d in dirs:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise DockerError(f"build-context directory {d!r} from {where} is not a directory")
        if all(p != path for p, _ in _extra_dirs):
            _extra_dirs.append((path, where))


def context_dirs() -> list[Path]:
    """Where build contexts are looked up, first match wins: env
    HARNESS_CONTAINERS (':'-separated), ini harness_containers, then the
    harness's own (CONTAINERS_DIR)."""
    env = [Path(d).expanduser().resolve()
           for d in os.environ.get(CONTEXTS_ENV, "").split(os.pathsep) if d]
    out: list[Path] = []
    for d in env + [p for p, _ in _extra_dirs] + [CONTAINERS_DIR]:
        if d not in out:
            out.append(d)
    return out


def _contexts() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in context_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_dir() and _NAME_RE.match(p.name) and (p / "Dockerfile").is_file():
                found.setdefault(p.name, p)
    return found


def known_images() -> list[str]:
    """Names of the build contexts found in context_dirs()."""
    return sorted(_contexts())


def context_name(image: str) -> str | None:
    """The build-context name ``image`` stands for: a name found in
    context_dirs(), or a path to a directory with a Dockerfile (the name is
    its base name plus a digest of the path, so two projects' ``server/``
    never share a tag); None for anything else (a local image reference)."""
    if "/" in image or image.startswith("."):
        path = Path(image).expanduser()
        if path.is_dir():
            if not (path / "Dockerfile").is_file():
                raise DockerError(f"image={image!r} is a directory without a Dockerfile "
                                  f"(a build context needs one)", image=image)
            path = path.resolve()
            base = re.sub(r"[^a-z0-9_.-]", "-", path.name.lower()).lstrip("._-") or "context"
            name = f"{base}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
            _path_contexts[name] = path
            return name
    return image if image in _contexts() else None


def _context_dir(name: str) -> Path:
    if name in _path_contexts:
        return _path_contexts[name]
    contexts = _contexts()
    if name not in contexts:
        raise DockerError(
            f"unknown image {name!r}: known images are {', '.join(sorted(contexts)) or '(none)'}"
            f" (build contexts under {', '.join(map(str, context_dirs()))})",
            image=name,
        )
    return contexts[name]


def _ignore_patterns() -> list[str]:
    """Generated-file patterns (the harness's containers/.gitignore): neither
    hashed nor copied into the build context."""
    patterns = []
    gitignore = CONTAINERS_DIR / ".gitignore"
    if gitignore.is_file():
        for line in gitignore.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.strip("/"))
    return patterns


def _context_files(context: Path) -> list[Path]:
    patterns = _ignore_patterns()
    files = []
    for root, dirs, names in os.walk(context):
        dirs.sort()
        for n in sorted(names):
            path = Path(root) / n
            rel = path.relative_to(context).as_posix()
            if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(rel, p) for p in patterns):
                continue
            files.append(path)
    return files


# Memo of `build-rootfs.sh inputs` (which may query apt, ~1 s): keyed by the
# context's content and the stat of the host's package state, so it is only
# reused while neither changed.
_inputs_memo: dict[tuple, bytes] = {}
_inputs_lock = threading.Lock()
_HOST_STATE_PATHS = ("/var/lib/apt/lists", "/var/lib/dpkg/status", "/etc/apt")


def _host_state() -> tuple:
    state = []
    for top in _HOST_STATE_PATHS:
        paths = [Path(top)]
        if paths[0].is_dir():
            paths += sorted(paths[0].iterdir())
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            state.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(state)


def _script_inputs(name: str, context: Path, files_digest: str) -> bytes:
    script = context / BUILD_SCRIPT
    if not script.is_file():
        return b""
    key = (name, files_digest, _host_state())
    with _inputs_lock:
        if key in _inputs_memo:
            return _inputs_memo[key]
    out = _run_script(script, ["inputs"], context, _INPUTS_TIMEOUT, name)
    with _inputs_lock:
        _inputs_memo[key] = out
    return out


def _run_script(script, args: list[str], cwd, timeout: float, name: str) -> bytes:
    """Run a context's build script; its stdout, or DockerError with the
    tail of what it wrote."""
    verb = args[0]
    try:
        proc = subprocess.run([str(script), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DockerError(f"{BUILD_SCRIPT} {verb} failed: {e}", image=name) from e
    if proc.returncode != 0:
        raise DockerError(
            f"{BUILD_SCRIPT} {verb} failed (exit {proc.returncode}); log tail:\n"
            + _tail(proc.stderr.decode(errors="replace") + proc.stdout.decode(errors="replace")),
            image=name,
        )
    return proc.stdout


def image_hash(name: str) -> str:
    """Content hash of image ``name``: context files + build-script inputs."""
    context = _context_dir(name)
    files = hashlib.sha256(_HASH_SCHEME)
    for path in _context_files(context):
        rel = path.relative_to(context).as_posix().encode()
        if path.is_symlink():
            kind, data = b"l", os.readlink(path).encode()
        else:
            kind = b"x" if os.access(path, os.X_OK) else b"f"
            data = path.read_bytes()
        for part in (rel, kind, str(len(data)).encode(), data):
            files.update(part + b"\0")
    files_digest = files.hexdigest()
    total = hashlib.sha256(files_digest.encode() + b"\0")
    total.update(_script_inputs(name, context, files_digest))
    return total.hexdigest()[:_HASH_LENGTH]


def image_tag(name: str) -> str:
    return f"{IMAGE_REPOSITORY_PREFIX}{name}:{image_hash(name)}"


def _image_exists(tag: str) -> bool:
    client = _client()
    try:
        with _translated("cannot inspect image", image=tag):
            client.images.get(tag)
        return True
    except DockerError as e:
        if e.__cause__ is not None and _is_not_found(e.__cause__):
            return False
        raise


def image_id(tag: str) -> str:
    """Id (sha256:...) of a local image."""
    with _translated("cannot inspect image", image=tag):
        return _client().images.get(tag).id


def image_labels(tag: str) -> dict[str, str]:
    """Labels of a local image."""
    with _translated("cannot inspect image", image=tag):
        return dict(_client().images.get(tag).labels or {})


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """Serialise builds of one image across threads and processes (the
    machine's lock directory, as every harness lock: not /tmp, where one
    user's lock file would refuse another user's run)."""
    with open(lock_path(f"image-{name}"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def ensure_image(name: str) -> str:
    """Build ``containers/<name>/`` unless ``harness/<name>:<hash>`` exists;
    return that tag."""
    context = _context_dir(name)
    tag = f"{IMAGE_REPOSITORY_PREFIX}{name}:{image_hash(name)}"
    if _image_exists(tag):
        return tag
    with _build_lock(name):
        if _image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix=f"harness-build-{name}-") as tmp:
            build_dir = Path(tmp) / "context"
            for path in _context_files(context):
                dest = build_dir / path.relative_to(context)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest, follow_symlinks=False)
            _run_rootfs_script(name, build_dir)
            _docker_build(name, tag, build_dir)
    if not _image_exists(tag):
        raise DockerError("build reported success but the image is missing", image=tag)
    return tag


def _run_rootfs_script(name: str, build_dir: Path) -> None:
    script = build_dir / BUILD_SCRIPT
    if not script.is_file():
        return
    _run_script(script, ["build", str(build_dir)], build_dir, _ROOTFS_BUILD_TIMEOUT, name)
    # The script's own copy is not part of the image context.
    script.unlink()


def _docker_build(name: str, tag: str, build_dir: Path) -> None:
    api = _client().api
    log: list[str] = []
    error = None
    with _translated("image build failed", image=tag):
        stream = api.build(
            path=str(build_dir),
            tag=tag,
            labels={IMAGE_LABEL: name, IMAGE_HASH_LABEL: tag.rpartition(":")[2]},
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                log.append(chunk["stream"])
            if "error" in chunk:
                error = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                log.append(f"ERROR: {error}\n")
    if error is not None:
        raise DockerError(
            "image build failed; build log tail:\n" + _tail("".join(log)),
            image=tag,
            daemon_message=error,
        )


# --------------------------------------------------------------------------
# containers


def run(
    image_tag: str,
    *,
    name: str,
    command: list[str] | None = None,
    labels: dict[str, str],
) -> Container:
    """Create and start a detached container with no network (the harness
    wires its namespace itself); not auto-removed, no init process."""
    client = _client()
    with _translated("cannot create container", image=image_tag, container=name):
        container = client.containers.create(
            image_tag,
            command=command,
            name=name,
            labels=dict(labels),
            network_mode="none",
            detach=True,
            auto_remove=False,
            init=False,
        )
    try:
        with _translated("cannot start container", image=image_tag, container=name):
            container.start()
            container.reload()
        state = container.attrs["State"]
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            with _translated("cannot read logs", container=name):
                logs = container.logs(tail=_LOG_TAIL_LINES).decode(errors="replace")
            raise DockerError(
                f"container exited at once (status {state.get('Status')},"
                f" exit code {state.get('ExitCode')}); removed; log tail:\n{_tail(logs)}",
                image=image_tag,
                container=name,
                daemon_message=state.get("Error") or None,
            )
    except BaseException:
        with contextlib.suppress(Exception):
            remove(container.id)
        raise
    return Container(id=container.id, name=container.name, pid=pid,
                     log_path=container.attrs.get("LogPath") or "")


def _container(id: str):
    with _translated("no such container", container=id):
        return _client().containers.get(id)


def kill(id: str, signal: str | int = "SIGKILL") -> None:
    with _translated(f"cannot send {signal}", container=id):
        _client().api.kill(id, signal=signal)


def pause(id: str) -> None:
    with _translated("cannot pause", container=id):
        _client().api.pause(id)


def unpause(id: str) -> None:
    with _translated("cannot unpause", container=id):
        _client().api.unpause(id)


def remove(id: str) -> None:
    """Force-remove (kills if running, drops anonymous volumes); a container
    that is already gone, or being removed, is fine."""
    docker = _import_docker()
    try:
        with _translated("cannot remove", container=id):
            _client().api.remove_container(id, force=True, v=True)
    except DockerError as e:
        cause = e.__cause__
        if isinstance(cause, docker.errors.NotFound):
            return
        if isinstance(cause, docker.errors.APIError) and "already in progress" in (
            e.daemon_message or ""
        ):
            return
        raise


def exit_code(id: str) -> int | None:
    """None while the container runs; its main process's exit code after
    (negative for a signal, as in subprocess)."""
    c = _container(id)
    with _translated("cannot inspect container", container=id):
        c.reload()
    state = c.attrs["State"]
    if state.get("Running") or state.get("Paused"):
        return None
    code = int(state.get("ExitCode", 0))
    return -(code - 128) if code > 128 else code  # docker reports 128 + N for signal N


def logs(id: str, tail: int = 50) -> str:
    c = _container(id)
    with _translated("cannot read logs", container=id):
        return c.logs(tail=tail).decode(errors="replace")


def pid(id: str) -> int:
    """Host pid of the container's main process; 0 when it is not running."""
    with _translated("cannot inspect", container=id):
        return int(_client().api.inspect_container(id)["State"].get("Pid") or 0)


def exec_run(id: str, argv: list[str]) -> tuple[int, bytes]:
    """Run ``argv`` inside the container; (exit code, stdout+stderr)."""
    container = _container(id)
    with _translated(f"cannot exec {argv!r}", container=id):
        result = container.exec_run(argv, stdout=True, stderr=True, stdin=False, tty=False)
    return int(result.exit_code), bytes(result.output or b"")


def list_labelled(
    label_key: str, label_value: str | None = None
) -> list[tuple[str, dict[str, str]]]:
    """(id, labels) of every container, running or not, carrying the label
    (with that value when given)."""
    label = label_key if label_value is None else f"{label_key}={label_value}"
    with _translated(f"cannot list containers labelled {label}"):
        found = _client().api.containers(all=True, filters={"label": label})
    return [(c["Id"], dict(c.get("Labels") or {})) for c in found]
