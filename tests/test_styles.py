"""Every pytest style gets the same lab: the README's examples run as a
user's suite would (pytester, a fresh pytest process) in trio, asyncio
(pytest-asyncio strict and auto modes, anyio on both backends) and sync
styles; a combination that cannot work stops at collection, saying why and
what to write instead."""

import pathlib
import re

import pytest

pytest_plugins = ["pytester"]

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_block(first_line: str | None = None) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    if first_line is None:
        return blocks[0]
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W",
                                         "ignore::DeprecationWarning", *args)


def test_readme_trio_examples(pytester):
    pytester.makepyfile(test_trio_style=readme_block())
    run(pytester).assert_outcomes(passed=2)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_readme_asyncio_examples(pytester, mode):
    pytester.makepyfile(test_asyncio_style=readme_block("# asyncio"))
    run(pytester, "-o", f"asyncio_mode={mode}").assert_outcomes(passed=2)


def test_readme_asyncio_examples_without_markers_in_auto_mode(pytester):
    pytester.makepyfile(test_auto=readme_block("# asyncio").replace("@pytest.mark.asyncio\n", ""))
    run(pytester, "-o", "asyncio_mode=auto").assert_outcomes(passed=2)


def test_readme_asyncio_examples_under_anyio_on_both_backends(pytester):
    pytester.makepyfile(test_anyio=readme_block("# asyncio").replace(
        "@pytest.mark.asyncio", "@pytest.mark.anyio"))
    result = run(pytester, "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_four_way_close_asyncio?asyncio? PASSED*",
                                 "*test_four_way_close_asyncio?trio? PASSED*"])


def test_readme_sync_examples(pytester):
    pytester.makepyfile(test_sync_style=readme_block("# sync"))
    run(pytester).assert_outcomes(passed=2)


def test_three_styles_in_one_session_with_fixtures_built_on_the_lab(pytester):
    pytester.makepyfile('''
        import pytest, pytest_asyncio, trio

        @pytest.fixture
        def server(lab):                      # a sync fixture on a sync test's lab
            return lab.pair()[1]

        @pytest_asyncio.fixture
        async def listening(lab):             # an asyncio fixture on an asyncio test's lab
            client, server = await lab.pair()
            return client, server, await server.listen(7000)

        def test_sync(lab, server):
            assert lab.hosts["server"] is server
            assert not server.sockets()           # a blocking-free sync method, as is

        @pytest.mark.asyncio
        async def test_asyncio(lab, listening):
            client, server, listener = listening
            conn = await client.connect(server, 7000)
            assert (await conn.send(b"hi")).value == 2

        async def test_trio(lab):
            client, server = await lab.pair()
            await trio.sleep(0)
            assert client.name == "client"
    ''')
    run(pytester).assert_outcomes(passed=3)


def test_argument_errors_are_raised_at_the_call_in_every_style(pytester):
    pytester.makepyfile('''
        import pytest, harness
        from harness import faults

        def test_sync(lab):
            client, server = lab.pair()
            with pytest.raises(harness.InvalidArgument, match="direction"):
                faults.drop(server, direction="sideways")
            with pytest.raises(harness.InvalidArgument, match="timeout must be"):
                lab.wait_state(client.socket(), "LISTEN", timeout=-1)

        @pytest.mark.asyncio
        async def test_asyncio(lab):
            client, server = await lab.pair()
            with pytest.raises(harness.InvalidArgument, match="unknown host"):
                lab["nobody"]
            with pytest.raises(harness.InvalidArgument, match="already exists"):
                await lab.host("client")
    ''')
    run(pytester).assert_outcomes(passed=2)


def test_marked_both_trio_and_asyncio_stops_at_collection_saying_what_to_write(pytester):
    pytester.makepyfile('''
        async def test_x(lab):
            pass
    ''')
    result = run(pytester, "-o", "asyncio_mode=auto", "-o", "trio_mode=true")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*test_x: the 'lab' fixture cannot serve this test: it is marked both trio and asyncio*"
        "keep one marker*@pytest.mark.trio or @pytest.mark.asyncio*"])


def test_process_faults_and_with_blocks_in_every_style(pytester):
    pytester.makepyfile('''
        import pytest, harness
        from harness import faults

        SLEEP = ["sh", "-c", "sleep 60"]

        def test_sync(lab):
            client, server = lab.pair()
            proc = server.spawn(SLEEP)
            with faults.pause(proc):                  # SIGSTOP ... SIGCONT
                assert open(f"/proc/{proc.pid}/stat").read().split()[2] == "T"
            assert faults.kill(proc) == -9            # blocking: the returncode

        @pytest.mark.asyncio
        async def test_asyncio(lab):
            client, server = await lab.pair()
            proc = await server.spawn(SLEEP)
            async with faults.pause(proc):
                assert open(f"/proc/{proc.pid}/stat").read().split()[2] == "T"
            with pytest.raises(TypeError, match="use 'async with'"):
                with faults.pause(proc):
                    pass
            assert await faults.kill(proc) == -9
    ''')
    run(pytester).assert_outcomes(passed=2)


def test_a_container_host_from_a_sync_test(pytester):
    pytester.makepyfile('''
        import pytest, harness

        @pytest.mark.requires("docker")
        def test_sync_container(lab):
            client = lab.host("client")
            server = lab.container("server", image="echo", ready=harness.listening(7))
            conn = client.connect(server, 7)
            assert conn.send(b"hi").value == 2 and conn.recv().value == b"hi"
            server.main.pause()                        # the container's main process
            assert conn.send(b"x").value == 1          # its kernel still takes the data
            server.main.resume()
            assert conn.recv().value == b"x"
            assert isinstance(server.main.kill(), int)  # blocking: the exit code, not a coroutine
    ''')
    run(pytester, "-rs").assert_outcomes(passed=1)
