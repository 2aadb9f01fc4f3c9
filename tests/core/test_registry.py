"""The registry: entry-point discovery, isolation of broken plugins, env switches, listing."""

import sys
import textwrap

import pytest

import trellis_mv
from trellis_mv import PluginLoadError, Registry, UnknownAggregatorError
from trellis_mv.cli import main

GOOD = '''
from trellis_mv import hookimpl

class Echo:
    """Uses the first view only."""
    name = "echo"
    def __init__(self, *, gain: float = 1.0):
        self.gain = gain
    def __call__(self, step):
        return step.select(0)

@hookimpl
def register_aggregators():
    return [Echo]
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Install fake distributions (dist-info + module) on sys.path: the real entry-point door."""

    def add(dist, entry, module, source, version="1.0"):
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[trellis_mv]\n{entry} = {module}\n")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))

    monkeypatch.syspath_prepend(str(tmp_path))
    yield add
    for name in [m for m in sys.modules if m.startswith("tmvfake_")]:
        del sys.modules[name]
    trellis_mv._registry._default = None  # rebuilt without the fakes on next use


def test_builtins_come_through_the_entry_point_door():
    infos = {i.name: i for i in Registry.from_entry_points().list()}
    for name in ("stochastic", "multidiffusion", "single"):
        assert infos[name].distribution == "trellis-mv"
        assert infos[name].version == trellis_mv.__version__
    assert infos["stochastic"].plugin == "stochastic"
    assert infos["stochastic"].options() == {"order": "cycle", "seed": 0}


def test_third_party_plugin_is_discovered_with_its_distribution(plugins):
    plugins("tmv-echo", "echo", "tmvfake_echo", GOOD, version="2.3")
    reg = Registry.from_entry_points()
    info = reg.info("echo")
    assert (info.distribution, info.version, info.summary) == ("tmv-echo", "2.3", "Uses the first view only.")
    assert reg.get("echo", gain=2.0).gain == 2.0


def test_broken_plugins_are_named_and_do_not_stop_the_others(plugins):
    plugins("tmv-echo", "echo", "tmvfake_echo", GOOD)
    plugins("tmv-crash", "crash", "tmvfake_crash", "raise RuntimeError('missing CUDA')\n")
    plugins("tmv-noname", "noname", "tmvfake_noname", """
        from trellis_mv import hookimpl
        class Nameless:
            def __call__(self, step): ...
        @hookimpl
        def register_aggregators():
            return [Nameless]
    """)
    plugins("tmv-badhook", "badhook", "tmvfake_badhook", """
        from trellis_mv import hookimpl
        @hookimpl
        def register_aggregators(unknown_argument):
            return []
    """)
    plugins("tmv-dupe", "dupe", "tmvfake_dupe", GOOD.replace("Uses the first", "Another"))
    with pytest.warns(RuntimeWarning) as caught:
        reg = Registry.from_entry_points()
        names = [i.name for i in reg.list()]
    assert {"echo", "stochastic", "multidiffusion"} <= set(names)
    messages = {e.plugin: (e.distribution, str(e)) for e in reg.errors}
    assert all(isinstance(e, PluginLoadError) for e in reg.errors)
    assert messages["crash"][0] == "tmv-crash" and "RuntimeError: missing CUDA" in messages["crash"][1]
    assert messages["noname"][0] == "tmv-noname" and "no `name` class attribute" in messages["noname"][1]
    assert messages["badhook"][0] == "tmv-badhook" and "unknown_argument" in messages["badhook"][1]
    clash = [m for _, m in messages.items() if "is claimed by" in m[1]]
    assert len(clash) == 1 and "'tmv-echo/echo'" in clash[0][1] and "'tmv-dupe/echo'" in clash[0][1]
    assert len(caught) >= 4


def test_a_name_two_plugins_claim_is_never_resolved_silently(plugins):
    plugins("tmv-echo", "echo", "tmvfake_echo", GOOD)
    plugins("tmv-dupe", "dupe", "tmvfake_dupe", GOOD.replace("Uses the first", "Another"))
    with pytest.warns(RuntimeWarning, match="claimed by"):
        reg = Registry.from_entry_points()
        reg.list()
    with pytest.raises(trellis_mv.AggregatorError, match="claimed by several distributions; choose one of 'tmv-dupe/echo', "
                                                         "'tmv-echo/echo'"):
        trellis_mv.resolve("echo", registry=reg)
    assert reg.info("tmv-dupe/echo").summary == "Another view only."
    assert trellis_mv.resolve("tmv-echo/echo:gain=3", registry=reg).gain == 3


def test_a_plugin_cannot_shadow_a_builtin(plugins):
    plugins("tmv-shadow", "shadow", "tmvfake_shadow", GOOD.replace('name = "echo"', 'name = "multidiffusion"'))
    with pytest.warns(RuntimeWarning, match="clashes with the one of 'trellis-mv', which keeps the name"):
        reg = Registry.from_entry_points()
        reg.list()
    assert reg.info("multidiffusion").distribution == "trellis-mv"
    assert reg.info("tmv-shadow/multidiffusion").distribution == "tmv-shadow"


@pytest.mark.parametrize(
    "source, message",
    [
        ("raise SystemExit(3)\n", "failed to import (tmvfake_bad): SystemExit: 3"),
        ("x = 1\n", "implements no hook: mark its register_aggregators (or register_adapters) function with "
                         "@trellis_mv.hookimpl"),
        (GOOD.replace("self.gain = gain", "raise OSError('no GPU here')"), "fails to build with its default options: "
                                                                           "OSError: no GPU here"),
    ],
    ids=["systemexit-at-import", "no-hookimpl", "init-fails"],
)
def test_broken_plugin_is_reported_by_list_and_leaves_other_commands_alone(plugins, capsys, tmp_path, source, message):
    plugins("tmv-bad", "bad", "tmvfake_bad", source)
    with pytest.warns(RuntimeWarning):
        assert main(["list", "--strict"]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "'tmv-bad'" in captured.err
    assert "multidiffusion" in captured.out
    with pytest.warns(RuntimeWarning):
        assert main(["list"]) == 0
        out = tmp_path / "demo"
        assert main(["demo", "--out", str(out), "--views", "1", "--steps", "1", "--quiet"]) == 0
    assert (out / "summary.json").is_file()


def test_disable_autoload_and_allow_list(plugins, monkeypatch):
    plugins("tmv-echo", "echo", "tmvfake_echo", GOOD)
    monkeypatch.setenv("TRELLIS_MV_DISABLE_PLUGIN_AUTOLOAD", "1")
    names = {i.name for i in Registry.from_entry_points().list()}
    assert "echo" not in names and {"stochastic", "multidiffusion"} <= names
    monkeypatch.delenv("TRELLIS_MV_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("TRELLIS_MV_PLUGINS", "something-else")
    assert "echo" not in {i.name for i in Registry.from_entry_points().list()}
    monkeypatch.setenv("TRELLIS_MV_PLUGINS", "something-else, echo")
    assert "echo" in {i.name for i in Registry.from_entry_points().list()}


def test_trace_switch_traces_hook_calls_and_steps(monkeypatch, capsys, caplog):
    from trellis_mv.testing import make_problem

    monkeypatch.setenv("TRELLIS_MV_TRACE", "1")
    reg = Registry.from_entry_points()
    reg.list()
    assert "register_aggregators" in capsys.readouterr().err
    problem = make_problem(num_views=2, steps=2)
    with caplog.at_level("WARNING", logger="trellis_mv"):
        with trellis_mv.patch_sampler(problem.sampler, reg.get("stochastic"), stage="shape"):
            problem.run()
    traced = [r.getMessage() for r in caplog.records if "trace" in r.getMessage()]
    assert len(traced) == 2 and "stage=shape" in traced[0] and "views=(0,)" in traced[0]


def test_default_registry_is_built_lazily_and_refreshable(plugins):
    first = trellis_mv.get_registry()
    assert trellis_mv.get_registry() is first
    plugins("tmv-echo", "echo", "tmvfake_echo", GOOD)
    with pytest.raises(UnknownAggregatorError):
        trellis_mv.get_aggregator("echo")
    assert trellis_mv.get_registry(refresh=True) is not first
    assert trellis_mv.get_aggregator("echo").name == "echo"
    trellis_mv.get_registry(refresh=True)


def test_cli_list_prints_names_and_distributions(plugins, capsys):
    plugins("tmv-echo", "echo", "tmvfake_echo", GOOD, version="0.4")
    trellis_mv.get_registry(refresh=True)
    try:
        assert main(["list"]) == 0
    finally:
        trellis_mv.get_registry(refresh=True)
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:] if line.strip()}
    assert "tmv-echo 0.4" in rows["echo"] and "Uses the first view only." in rows["echo"]
    assert "trellis-mv" in rows["multidiffusion"]
    assert "trellis-mv" in rows["proxy"] and "--model proxy" in rows["proxy"]  # adapters are listed too


def test_cli_list_strict_fails_on_broken_plugin(plugins, capsys):
    plugins("tmv-crash", "crash", "tmvfake_crash", "raise ImportError('nope')\n")
    with pytest.warns(RuntimeWarning):
        trellis_mv.get_registry(refresh=True)
    try:
        assert main(["list", "--strict"]) == 1
    finally:
        with pytest.warns(RuntimeWarning):
            trellis_mv.get_registry(refresh=True)
    assert "plugin 'crash' from distribution 'tmv-crash' failed to import" in capsys.readouterr().err
