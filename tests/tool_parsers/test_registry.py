"""Tool parsers come from plugins (hook register_tool_parsers) and are picked per model."""
import pytest

from corral import hookimpl
from corral.registry.plugins import PluginManager
from corral.registry.tool_parsers import UnknownToolParserError
from corral.tool_parsers.generic import JsonToolParser
from corral.tool_parsers.hermes import HermesToolParser
from corral.tool_parsers.llama3_json import Llama3JsonToolParser

# excerpts of the chat templates shipped in the checkpoints' tokenizer_config.json
LLAMA31_TEMPLATE = ('{%- if builtin_tools is defined or tools is not none %}'
                    '{{- "Environment: ipython\\n" }}{%- endif %}'
                    '{%- if builtin_tools is defined %}{{- "<|python_tag|>" + tool_call.name }}{%- endif %}')
LLAMA32_TEMPLATE = ('{%- elif message.role == "tool" or message.role == "ipython" %}'
                    '{{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}')
LLAMA2_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
                   "{% endif %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}")


class BetterHermes(HermesToolParser):
    pass


class PythonicToolParser(JsonToolParser):
    pass


def test_builtin_parsers_are_registered_through_the_hook():
    registry = PluginManager().tool_parsers()
    assert registry.names() == ["hermes", "json", "llama3_json"]
    assert registry.owners == {"hermes": "qwen3", "llama3_json": "llama", "json": "corral"}
    assert registry.resolve("hermes") is HermesToolParser and registry.resolve("json") is JsonToolParser


def test_a_plugin_adds_a_parser_and_says_which_models_use_it():
    class Plugin:
        @hookimpl
        def register_tool_parsers(self, register):
            register("pythonic", f"{__name__}:PythonicToolParser", architectures=["Llama4ForConditionalGeneration"])

    pm = PluginManager()
    pm.register(Plugin(), name="fake-pythonic")
    registry = pm.tool_parsers()
    assert registry.resolve("pythonic") is PythonicToolParser
    assert registry.for_model(["Llama4ForConditionalGeneration"]) is PythonicToolParser


def test_a_third_party_parser_of_the_same_name_overrides_the_builtin_for_its_models():
    class Plugin:
        @hookimpl
        def register_tool_parsers(self, register):
            register("hermes", f"{__name__}:BetterHermes")

    pm = PluginManager()
    pm.register(Plugin(), name="fake-hermes")
    registry = pm.tool_parsers()
    assert registry.resolve("hermes") is BetterHermes
    assert registry.for_model(["Qwen3ForCausalLM"]) is BetterHermes
    assert any("fake-hermes wins" in c for c in registry.conflicts)


def test_an_unknown_parser_name_is_a_one_line_error_naming_the_known_ones():
    with pytest.raises(UnknownToolParserError) as e:
        PluginManager().tool_parsers().for_model(["Qwen3ForCausalLM"], override="hermes2")
    assert str(e.value) == "unknown tool parser 'hermes2'; known: hermes, json, llama3_json"


def test_qwen3_uses_hermes():
    assert PluginManager().tool_parsers().for_model(["Qwen3ForCausalLM"]) is HermesToolParser


@pytest.mark.parametrize("template", [LLAMA31_TEMPLATE, LLAMA32_TEMPLATE])
def test_a_llama_3_chat_template_uses_llama3_json(template):
    assert PluginManager().tool_parsers().for_model(["LlamaForCausalLM"], None, template) is Llama3JsonToolParser


def test_a_llama_2_chat_template_has_no_tool_format():
    registry = PluginManager().tool_parsers()
    assert registry.for_model(["LlamaForCausalLM"], None, LLAMA2_TEMPLATE) is None
    assert registry.for_model(["LlamaForCausalLM"]) is None
    assert registry.for_model(["MistralForCausalLM"]) is None


def test_the_override_wins_over_the_models_own_format():
    registry = PluginManager().tool_parsers()
    assert registry.for_model(["Qwen3ForCausalLM"], override="json") is JsonToolParser


def test_a_registration_with_options_of_the_wrong_kind_is_refused_and_recorded():
    class Plugin:
        @hookimpl
        def register_tool_parsers(self, register):
            register("bad", f"{__name__}:PythonicToolParser", architectures="Qwen3ForCausalLM")
            register("worse", f"{__name__}:PythonicToolParser", models=["Qwen3ForCausalLM"])

    pm = PluginManager()
    pm.register(Plugin(), name="fake-bad")
    assert pm.tool_parsers().names() == ["hermes", "json", "llama3_json"]
    error = pm.infos["fake-bad"].error
    assert "architectures takes a list of strings" in error and "'models'" in error
