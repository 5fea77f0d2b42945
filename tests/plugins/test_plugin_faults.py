"""The plugin machinery as a user meets it when something is wrong: a broken or clashing plugin package, a
hook that raises, a source plugin with a bug. Each gets one line and a plugin's trouble stays its own."""
import json
import subprocess

import pytest

from corral import hookimpl
from corral.cli import main
from corral.commands import plugins as plugins_command
from corral.commands.plugins import check_installed, corral_requirements, describe
from corral.registry.architectures import ArchitectureRegistry, UnknownArchitectureError
from corral.registry.errors import SourceError
from corral.registry.plugins import PluginManager
from corral.registry.sources import resolve_model
from corral.store import ModelStore


def test_a_plugin_that_calls_sys_exit_on_import_is_reported_and_skipped(plugin_distribution):
    plugin_distribution("review-exit", "review-exit", "review_exit", "import sys\nsys.exit(3)\n")
    pm = PluginManager()
    assert pm.infos["review-exit"].error == "SystemExit: 3"
    assert "LlamaForCausalLM" in pm.architectures().names()


def test_an_entry_point_named_like_a_builtin_does_not_silently_replace_it(plugin_distribution, capsys):
    plugin_distribution("review-llama", "llama", "review_llama", """
        from corral import hookimpl

        @hookimpl
        def register_architectures(register):
            register("ReviewForCausalLM", "review_llama:Model")
    """)
    pm = PluginManager()
    assert pm.architectures().names().count("LlamaForCausalLM") == 1
    assert "ReviewForCausalLM" not in pm.architectures().names()
    (shadowed,) = [p for p in describe(pm) if p["package"] == "review-llama"]
    assert "corral already has a plugin named 'llama'" in shadowed["error"] and not shadowed["registered"]
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "llama 0.1.0 (built-in, corral.plugins.llama)" in out and "llama 0.0.1 (plugin from review-llama" in out


def test_a_registration_of_the_wrong_kind_is_refused_and_the_listing_still_works(plugin_distribution, capsys):
    plugin_distribution("review-bad", "review-bad", "review_bad", """
        from corral import hookimpl

        @hookimpl
        def register_architectures(register):
            register("GoodForCausalLM", "review_bad:Model")
            register(42, "review_bad:Model")
            register("NoColonForCausalLM", "review_bad.Model")
    """)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "registers: GoodForCausalLM\n" in out
    assert "register(42, 'review_bad:Model') refused" in out and "register('NoColonForCausalLM'" in out
    assert "NoColonForCausalLM" not in PluginManager().architectures().names()


def test_a_hook_that_raises_keeps_nothing_it_registered(plugin_distribution):
    plugin_distribution("review-raise", "review-raise", "review_raise", """
        from corral import hookimpl

        @hookimpl
        def register_architectures(register):
            register("HalfForCausalLM", "review_raise:Model")
            raise RuntimeError("boom")
    """)
    pm = PluginManager()
    assert "HalfForCausalLM" not in pm.architectures().names()
    assert pm.infos["review-raise"].error == "register_architectures failed: RuntimeError: boom"
    pm.architectures()  # the hooks run again: the error is not repeated
    assert pm.infos["review-raise"].error == "register_architectures failed: RuntimeError: boom"


def test_plugins_json_stays_json_when_a_plugin_prints(plugin_distribution, capsys):
    plugin_distribution("review-chatty", "review-chatty", "review_chatty", """
        print("hello from a plugin")
        from corral import hookimpl

        @hookimpl
        def register_architectures(register):
            print("registering")
            register("ChattyForCausalLM", "review_chatty:Model")
    """)
    assert main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    chatty = next(p for p in json.loads(out) if p["name"] == "review-chatty")
    assert chatty["registered"] == ["ChattyForCausalLM"] and "hello from a plugin" in err


def test_the_allow_list_leaves_builtins_out_as_disabled_with_their_package(monkeypatch):
    monkeypatch.setenv("CORRAL_PLUGINS", "qwen3")
    llama = next(p for p in describe(PluginManager()) if p["name"] == "llama")
    assert llama["enabled"] is False and llama["package"] == "corral" and llama["builtin"]


def test_an_architecture_module_that_fails_to_import_is_one_error():
    registry = ArchitectureRegistry({"BrokenForCausalLM": "review_no_such_module:Model"},
                                    {"BrokenForCausalLM": "review-broken"})
    with pytest.raises(UnknownArchitectureError, match="plugin review-broken registered BrokenForCausalLM as "
                                                       "review_no_such_module:Model, but importing"):
        registry.resolve(["BrokenForCausalLM"])


def test_a_source_plugin_s_own_bug_is_one_error_naming_the_plugin(tmp_path):
    class Source:
        def __init__(self, store):
            pass

        def fetch(self, ref, progress, update=False):
            return {}["boom"]

    class Plugin:
        @hookimpl
        def register_sources(self, register):
            register("local", Source)

    pm = PluginManager(load_entry_points=False)
    pm.register(Plugin(), name="review-source")
    with pytest.raises(SourceError, match="the 'local' source of plugin review-source failed: KeyError: 'boom'"):
        resolve_model(str(tmp_path), plugin_manager=pm, store=ModelStore(tmp_path / "store"))


def test_uninstall_refuses_what_corral_needs_through_its_dependencies(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(plugins_command.subprocess, "call", lambda command: calls.append(command) or 0)
    assert "filelock" in corral_requirements()  # torch and huggingface-hub need it; corral does not name it
    assert main(["plugins", "uninstall", "filelock"]) == 1
    assert "corral itself needs filelock" in capsys.readouterr().err and not calls


def test_install_reports_a_plugin_that_loads_with_a_refused_registration(monkeypatch, capsys):
    listing = [{"name": "half", "package": "review-half", "version": "0.0.1", "module": "review_half",
                "builtin": False, "enabled": True, "hooks": ["register_architectures"],
                "registered": ["GoodForCausalLM"], "conflicts": [],
                "error": "register_architectures: register(42, None) refused"}]
    monkeypatch.setattr(plugins_command.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=json.dumps(listing), stderr=""))
    assert check_installed(["review-half"]) == 1
    out, err = capsys.readouterr()
    assert "plugin half from review-half: register_architectures: register(42, None) refused" in err
    assert "fails to load" not in err and "registers GoodForCausalLM" in out
