"""The locally built images (containers/*) and harness._docker.

Needs a docker daemon (.ci/dockerd.sh); skipped with the reason otherwise.
Every container is labelled harness.test=<pid of this process> and removed
by the `spawn` fixture's finalizer, even when the test fails.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from harness import _docker

UNAVAILABLE = _docker.daemon_unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

IMAGES = ("echo", "redis")
TEST_LABEL = "harness.test"
OWNER = str(os.getpid())


def _netns_inode(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _host_netns_inodes() -> set[int]:
    """The root namespace (via pid 1 when readable: some sandboxes hide it)
    and the test process's own namespace."""
    inodes = {_netns_inode("self")}
    try:
        inodes.add(_netns_inode(1))
    except PermissionError:
        pass
    return inodes


@pytest.fixture(scope="module")
def tags() -> dict[str, str]:
    """Build (or find) every image once; also records cold timings."""
    return {name: _docker.ensure_image(name) for name in IMAGES}


@pytest.fixture
def spawn():
    created: list[str] = []

    def _spawn(image: str, command: list[str] | None = None) -> _docker.Container:
        name = f"harness-test-{OWNER}-{uuid.uuid4().hex[:8]}"
        created.append(name)
        return _docker.run(
            _docker.ensure_image(image),
            name=name,
            command=command,
            labels={TEST_LABEL: OWNER},
        )

    yield _spawn
    for ident in created:
        _docker.remove(ident)
    for ident, _labels in _docker.list_labelled(TEST_LABEL, OWNER):
        _docker.remove(ident)


def _wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("name", IMAGES)
def test_image_builds_with_label(tags, name):
    tag = tags[name]
    assert tag.startswith(f"harness/{name}:")
    labels = _docker.image_labels(tag)
    assert labels[_docker.IMAGE_LABEL] == name
    assert labels[_docker.IMAGE_HASH_LABEL] == tag.rpartition(":")[2]


@pytest.mark.parametrize("name", IMAGES)
def test_second_ensure_image_is_a_cache_hit(tags, name):
    before = _docker.image_id(tags[name])
    t0 = time.monotonic()
    tag = _docker.ensure_image(name)
    elapsed = time.monotonic() - t0
    assert tag == tags[name]
    assert _docker.image_id(tag) == before
    assert elapsed < 1.0, f"ensure_image({name!r}) took {elapsed:.2f} s on a cache hit"


def test_unknown_image_is_a_clear_error():
    with pytest.raises(_docker.DockerError) as info:
        _docker.ensure_image("no-such-image")
    message = str(info.value)
    assert "unknown image 'no-such-image'" in message
    for name in IMAGES:
        assert name in message
    assert info.value.image == "no-such-image"


@pytest.mark.parametrize("name", IMAGES)
def test_container_has_its_own_netns(tags, spawn, name):
    c = spawn(name)
    assert c.pid > 0
    assert c.pid == _docker.pid(c.id)
    assert _netns_inode(c.pid) not in _host_netns_inodes()
    # network_mode none: loopback only.
    with open(f"/proc/{c.pid}/net/dev") as f:
        devices = {line.split(":")[0].strip() for line in f.readlines()[2:]}
    assert devices == {"lo"}


def test_echo_serves_http_and_echo(spawn):
    c = spawn("echo")

    def http():
        rc, out = _docker.exec_run(c.id, ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"])
        return rc == 0 and b"harness echo" in out

    _wait_for(http, what="httpd on 8080")
    rc, out = _docker.exec_run(c.id, ["sh", "-c", "echo ping-7 | nc -w 2 127.0.0.1 7"])
    assert (rc, out) == (0, b"ping-7\n")


def test_redis_server_runs(spawn):
    c = spawn("redis")
    with open(f"/proc/{c.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[0].startswith(b"redis-server")  # its title: "redis-server *:6379"

    def ping():
        rc, out = _docker.exec_run(c.id, ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"])
        return rc == 0 and out.strip() == b"PONG"

    _wait_for(ping, what="redis-cli ping")
    rc, out = _docker.exec_run(c.id, ["redis-cli", "set", "k", "v"])
    assert (rc, out.strip()) == (0, b"OK")
    rc, out = _docker.exec_run(c.id, ["redis-cli", "get", "k"])
    assert (rc, out.strip()) == (0, b"v")


def test_pause_unpause_kill_and_remove_twice(spawn):
    c = spawn("echo", ["sleep", "600"])
    assert any(ident == c.id for ident, _ in _docker.list_labelled(TEST_LABEL, OWNER))
    _docker.pause(c.id)
    with pytest.raises(_docker.DockerError) as info:
        _docker.exec_run(c.id, ["true"])
    assert "paused" in str(info.value)
    _docker.unpause(c.id)
    assert _docker.exec_run(c.id, ["true"]) == (0, b"")
    _docker.kill(c.id)
    _wait_for(lambda: _docker.pid(c.id) == 0, what="container death")
    _docker.remove(c.id)
    _docker.remove(c.id)  # already gone: fine
    assert all(ident != c.id for ident, _ in _docker.list_labelled(TEST_LABEL, OWNER))
    with pytest.raises(_docker.DockerError) as info:
        _docker.pid(c.id)
    assert "No such container" in (info.value.daemon_message or "")


def test_failed_start_leaves_no_container(spawn):
    with pytest.raises(_docker.DockerError) as info:
        spawn("echo", ["/no/such/binary"])
    assert info.value.container is not None
    assert _docker.list_labelled(TEST_LABEL, OWNER) == []


def test_list_labelled_filters_by_value(spawn):
    c = spawn("echo", ["sleep", "600"])
    mine = dict(_docker.list_labelled(TEST_LABEL, OWNER))
    assert mine[c.id][TEST_LABEL] == OWNER
    assert c.id in dict(_docker.list_labelled(TEST_LABEL))
    assert c.id not in dict(_docker.list_labelled(TEST_LABEL, "not-" + OWNER))
