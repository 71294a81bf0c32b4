"""Where build contexts come from: the harness's own (in the installed
package, else the repository's containers/), directories the user adds (env
HARNESS_CONTAINERS, ini harness_containers: first match wins), and a path
given as image=.  Bad input is a clear error before anything is built.
(Building and running them: tests/test_packaging.py, test_docker_images.py.)"""

import shutil

import pytest

from harness import _docker

pytest_plugins = ["pytester"]


@pytest.fixture
def contexts(tmp_path, monkeypatch):
    monkeypatch.setattr(_docker, "_extra_dirs", [])
    mine = tmp_path / "mine"
    shutil.copytree(_docker.CONTAINERS_DIR / "echo", mine / "echo")     # shadows ours
    shutil.copytree(_docker.CONTAINERS_DIR / "echo", mine / "web")
    (mine / "notes").mkdir()                                           # no Dockerfile: ignored
    return mine


def test_env_directories_come_first_and_shadow_the_harness_own(contexts, monkeypatch):
    assert "web" not in _docker.known_images()
    monkeypatch.setenv("HARNESS_CONTAINERS", f"{contexts}:/nonexistent")
    assert {"echo", "redis", "web"} <= set(_docker.known_images())
    assert "notes" not in _docker.known_images()
    assert _docker._context_dir("echo") == contexts / "echo"
    assert _docker._context_dir("redis") == _docker.CONTAINERS_DIR / "redis"
    assert _docker.context_dirs()[0] == contexts


def test_a_path_is_a_context_with_a_name_of_its_own(contexts, monkeypatch):
    monkeypatch.chdir(contexts)
    name = _docker.context_name("./web")
    assert name.startswith("web-") and _docker._context_dir(name) == contexts / "web"
    assert _docker.context_name(str(contexts / "web")) == name
    assert _docker.context_name("web") is None            # a bare name is not a path
    assert _docker.context_name("library/redis:7") is None    # a local image reference
    with pytest.raises(_docker.DockerError, match="'./notes' is a directory without a "
                                                  "Dockerfile"):
        _docker.context_name("./notes")


def test_the_ini_option_adds_directories_relative_to_the_ini_file(pytester):
    shutil.copytree(_docker.CONTAINERS_DIR / "echo", pytester.path / "ctx" / "mysrv")
    pytester.makeini("[pytest]\nharness_containers = ctx\n")
    pytester.makepyfile('''
        from harness import _docker

        def test_seen():
            assert "mysrv" in _docker.known_images()
    ''')
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nharness_containers = missing\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: build-context directory '*missing' from ini "
                                 "harness_containers is not a directory*"])
