"""The public surface is a chosen list (as trio's): nothing else leaks."""

import types

import harness
from harness import faults


def public(module) -> set[str]:
    return {n for n, v in vars(module).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType)
            and n not in ("annotations",)}


def test_harness_exports_exactly_its_list():
    harness._load_all()  # names load on first use (PEP 562)
    assert public(harness) == set(harness.__all__)


def test_faults_exports_exactly_its_list():
    assert public(faults) == set(faults.__all__)


# --- the layers -------------------------------------------------------------

import ast  # noqa: E402
import pathlib  # noqa: E402

HARNESS = pathlib.Path(harness.__file__).parent


def _modules():
    for path in sorted(HARNESS.rglob("*.py")):
        yield path.relative_to(HARNESS).as_posix(), ast.parse(path.read_text())


def _private_attributes_defined(tree) -> set[str]:
    """``self._x = ...`` and ``def _x`` inside the module's classes."""
    out = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name.startswith("_") and not node.name.startswith("__"):
                out.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self" and \
                    node.attr.startswith("_") and not node.attr.startswith("__"):
                out.add(node.attr)
    return out


def test_no_module_reaches_into_another_modules_objects():
    """A fault, a host, the tracer... use what the other layers offer
    (``lab.context``, public methods, module functions), never the private
    attributes of objects defined elsewhere (``lab._nursery``, ``host._diag``,
    ``proc._popen``: issue 8).  Within its own module a class's privates are
    fair game; ``_harness_*`` are the plugin's marks on pytest's nodes."""
    modules = dict(_modules())
    defined = {name: _private_attributes_defined(tree) for name, tree in modules.items()}
    offenders = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith(("__", "_harness_"))):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in defined[name]:
                continue  # this module's own class
            owners = [m for m, attrs in defined.items() if node.attr in attrs]
            if owners:
                offenders.append(f"{name}:{node.lineno} {ast.unparse(node)} "
                                 f"(private to {', '.join(owners)})")
    assert offenders == []


def _imports(name: str, tree) -> set[str]:
    """The harness modules ``name`` imports, at its top level or lazily
    inside a function (a lazy import is still a dependency)."""
    pkg = name.rsplit("/", 1)[0].replace("/", ".") if "/" in name else ""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg.split(".") if pkg else []
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                full = f"{mod}.{alias.name}" if mod else alias.name
                out.add(full if (HARNESS / (full.replace(".", "/") + ".py")).exists() else mod)
    return {m for m in out if m}


# the layers, lowest first (the packages' __init__ are the API, on top); a module may import (at top level) only from its
# own layer or below.  ARCHITECTURE.md draws the same picture.
LAYERS = [
    {"errors", "_check", "_names", "_netns", "_netlink", "_rtnl", "_diag", "_poll", "_undo", "_tcpline",
     "_tap", "_sysctls", "_nfqueue", "_nlmsg", "_wire", "_iptables", "_tracefs", "_docker", "_scapy", "_sockops", "_uml",
     "_kernels", "_guest_batch", "_exclusive"},
    {"_observe", "_observe.states", "_observe.snapshot", "_observe.timeline", "_observe.lastinfo",
     "_observe.expect", "_observe.capture", "_timers"},
    {"_topology", "_topology.backend", "_topology.netns", "_topology.container", "_sweep", "_process",
     "_features"},
    {"_sockets", "_tracer", "_host", "_lab", "_peer"},
    {*(f"faults.{p.stem}" for p in (HARNESS / "faults").glob("*.py")
                 if p.stem != "__init__")},
    {"faults", "_bridge", "_fixtures", "plugin", "_pluginrun", "_guest_plugin", "__main__", ""},
]


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    raise AssertionError(f"harness module {module!r} is in no layer of this test: place it")


def test_layers_import_only_downwards():
    offenders = []
    for name, tree in _modules():
        mod = name[:-3].replace("/", ".").removesuffix(".__init__").removesuffix("__init__")
        mine = _layer(mod)
        for dep in _imports(name, tree):
            if _layer(dep) > mine:
                offenders.append(f"{mod} (layer {mine}) imports {dep} (layer {_layer(dep)})")
    assert offenders == []


def test_every_type_a_public_function_returns_is_exported():
    """A user can annotate with, and isinstance against, whatever a fault or
    an entry point hands back (issue 8: Firewall, Pause... were not)."""
    import inspect
    import re
    harness._load_all()
    exported = set(harness.__all__) | set(faults.__all__)
    missing = []
    for module in (harness, faults):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or not callable(obj):
                continue
            ret = inspect.get_annotations(inspect.unwrap(obj)).get("return")
            for word in re.findall(r"[A-Z][A-Za-z]+", str(ret or "")):
                if word in ("Awaitable", "Any", "None", "Iterator", "AsyncIterator", "Callable"):
                    continue
                if word not in exported:
                    missing.append(f"{module.__name__}.{name} -> {word}")
    assert missing == []


def test_renamed_names_still_work_and_say_their_new_name(recwarn):
    """host.peer() -> host.program(), faults.packets() -> faults.intercept(),
    Firewall.packets()/wait_packets() -> matched()/wait_matched(): the old
    names warn (DeprecationWarning) and do the same thing."""
    import warnings
    from harness._host import Host
    from harness.faults._firewall import Firewall
    assert "now host.program()" in inspect_source(Host.peer)
    assert "now matched()" in inspect_source(Firewall.packets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            faults.packets(object())
        except harness.InvalidArgument:
            pass  # warned first, then refused the target as intercept() does
    assert [str(w.message) for w in caught] == ["faults.packets() is now faults.intercept()"]


def inspect_source(fn) -> str:
    import inspect
    return inspect.getsource(inspect.unwrap(fn))


async def test_host_peer_warns_and_starts_a_program(lab):
    import pytest
    client, = [await lab.host("client")]
    with pytest.warns(DeprecationWarning, match=r"host.peer\(\) is now host.program\(\)"):
        prog = await client.peer()
    assert isinstance(prog, harness.Program)
