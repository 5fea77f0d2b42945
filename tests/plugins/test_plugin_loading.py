"""Plugins load from entry points; built-ins go through the same path; broken ones are reported."""
import pytest

from corral import hookimpl
from corral.cli import main
from corral.registry.plugins import PluginManager


@pytest.fixture
def fake_distribution(plugin_distribution):
    """install(name, module, source): a plugin package `name` whose entry point is `name` too."""
    return lambda name, module, source: plugin_distribution(name, name, module, source, version="1.2.3")


def test_builtin_architectures_load_through_entry_points():
    pm = PluginManager()
    names = {p.name: p for p in pm.plugins()}
    assert names["qwen3"].builtin and names["qwen3"].hooks == ["register_architectures", "register_tool_parsers"]
    assert {"Qwen3ForCausalLM", "LlamaForCausalLM"} <= set(pm.architectures().names())


def test_a_registered_plugin_object_adds_an_architecture_until_unregistered():
    class FakeModel:
        pass

    class Plugin:
        @hookimpl
        def register_architectures(self, register):
            register("FakeForCausalLM", f"{__name__}:FakeModel")

    pm = PluginManager()
    pm.register(Plugin(), name="fake")
    assert "FakeForCausalLM" in pm.architectures().names()
    pm.unregister("fake")
    assert "FakeForCausalLM" not in pm.architectures().names()


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(fake_distribution):
    fake_distribution("fake-broken", "fake_broken", "raise ImportError('no module named missing_dependency')")
    pm = PluginManager()
    broken = next(p for p in pm.plugins() if p.name == "fake-broken")
    assert "missing_dependency" in broken.error
    assert "LlamaForCausalLM" in pm.architectures().names()


def test_a_third_party_plugin_overrides_a_builtin_and_the_conflict_is_reported(fake_distribution):
    fake_distribution("fake-llama", "fake_llama", """
        from corral import hookimpl

        @hookimpl
        def register_architectures(register):
            register("LlamaForCausalLM", "fake_llama:Better")
    """)
    registry = PluginManager().architectures()
    assert registry.targets["LlamaForCausalLM"] == "fake_llama:Better"
    assert any("fake-llama wins" in c for c in registry.conflicts)


def test_the_allow_list_limits_which_plugins_load(monkeypatch):
    monkeypatch.setenv("CORRAL_PLUGINS", "qwen3")
    pm = PluginManager()
    assert [p.name for p in pm.plugins()] == ["qwen3"]
    assert pm.architectures().names() == ["Qwen3ForCausalLM"]


def test_tracing_logs_every_hook_call(monkeypatch, caplog):
    monkeypatch.setenv("CORRAL_TRACE_PLUGINS", "1")
    with caplog.at_level("INFO", logger="corral.registry.plugins"):
        PluginManager().architectures()
    assert "register_architectures" in caplog.text and "Qwen3ForCausalLM" in caplog.text


def test_corral_plugins_lists_plugins_with_hooks_and_errors(fake_distribution, capsys):
    fake_distribution("fake-broken", "fake_broken", "import does_not_exist")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "qwen3 " in out and "registers: Qwen3ForCausalLM" in out
    assert "fake-broken" in out and "error: ModuleNotFoundError" in out
