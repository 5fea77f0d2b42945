"""What `corral serve` serves: flags, the seed deployment's environment names and config files."""
import re

import pytest

from corral.cli import build_parser, main
from corral.commands.serve import build_server_config
from corral.config import ConfigError
from corral.server.config import DEFAULT_MODEL, build_config, parse_duration, parse_size

TOML = """
[server]
port = 9000
api_key = "from-file"

[defaults]
max_num_seqs = 8

[models.qwen]
model = "qwen3-4b"
aliases = ["gpt-4o-mini", "qwen3"]
max_model_len = 8192
gpu_memory_utilization = 0.5
dtype = "bfloat16"
keep_alive = "5m"
sampling = { temperature = 0.6, top_p = 0.95 }

[models.llama]
reference = "hf:meta-llama/Llama-2-7b-chat-hf"
kv_cache_memory_bytes = "2GiB"
"""

YAML = """
server:
  host: 127.0.0.1
models:
  - name: qwen
    model: qwen3-4b
    aliases: [gpt-4o-mini]
    default_sampling: {temperature: 0.7}
  - model: /models/my-llama/
    max_num_seqs: 4
"""


def serve_args(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_toml_file_gives_one_spec_per_model_section(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(TOML)
    config = build_config(file=path)
    qwen, llama = config.models
    assert (config.port, config.api_key) == (9000, "from-file")
    assert (qwen.name, qwen.model, qwen.aliases) == ("qwen", "qwen3-4b", ["gpt-4o-mini", "qwen3"])
    assert (qwen.max_model_len, qwen.dtype, qwen.keep_alive, qwen.max_num_seqs) == (8192, "bfloat16", 300.0, 8)
    assert qwen.sampling == {"temperature": 0.6, "top_p": 0.95}
    assert (llama.name, llama.model, llama.kv_cache_memory_bytes) == ("llama", "hf:meta-llama/Llama-2-7b-chat-hf",
                                                                      2 << 30)
    assert qwen.gpu_memory_utilization == 0.5 and llama.gpu_memory_utilization == pytest.approx(0.4)


def test_yaml_file_with_a_list_of_models(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(YAML)
    config = build_config(file=path)
    assert config.host == "127.0.0.1"
    assert [m.name for m in config.models] == ["qwen", "my-llama"]
    assert config.models[0].sampling == {"temperature": 0.7}
    assert config.models[1].max_num_seqs == 4 and "/models/my-llama/" in config.models[1].aliases


def test_no_model_serves_the_default_manifest():
    config = build_config(env={})
    assert [m.model for m in config.models] == [DEFAULT_MODEL] and config.models[0].name == DEFAULT_MODEL
    assert (config.host, config.port, config.api_key) == ("127.0.0.1", 8000, None)  # this machine only, as Ollama


def test_seed_deployment_environment_names_work():
    env = {"MODEL_NAME": "qwen3-4b", "MAX_MODEL_LEN": "4096", "GPU_MEMORY_UTILIZATION": "0.8",
           "TENSOR_PARALLEL_SIZE": "2", "CORRAL_API_KEY": "secret"}
    config = build_server_config(serve_args(), env)
    (spec,) = config.models
    assert (spec.model, spec.max_model_len, spec.gpu_memory_utilization, spec.tensor_parallel_size) == (
        "qwen3-4b", 4096, 0.8, 2)
    assert config.api_key == "secret"


def test_flags_override_the_environment():
    env = {"MODEL_NAME": "qwen3-4b", "MAX_MODEL_LEN": "4096", "CORRAL_API_KEY": "env-key"}
    args = serve_args("llama-2-7b-chat", "--max-model-len", "1024", "--api-key", "flag-key", "--port", "8080",
                      "--max-num-seqs", "32", "--max-num-batched-tokens", "2048", "--gpu-memory-utilization", "0.6")
    config = build_server_config(args, env)
    (spec,) = config.models
    assert (spec.model, spec.max_model_len, spec.max_num_seqs, spec.max_num_batched_tokens) == (
        "llama-2-7b-chat", 1024, 32, 2048)
    assert (config.api_key, config.port, spec.gpu_memory_utilization) == ("flag-key", 8080, 0.6)


def test_several_models_split_the_gpu_memory_evenly():
    config = build_server_config(serve_args("a-model", "b-model", "--gpu-memory-utilization", "0.8"), {})
    assert [m.gpu_memory_utilization for m in config.models] == [pytest.approx(0.4)] * 2


def test_served_model_name_gives_a_name_and_aliases():
    (spec,) = build_server_config(serve_args("/models/q", "--served-model-name", "qwen", "gpt-4o"), {}).models
    assert (spec.name, spec.aliases) == ("qwen", ["gpt-4o"])
    a, b = build_server_config(serve_args("x", "y", "--served-model-name", "one", "two"), {}).models
    assert (a.name, b.name) == ("one", "two")
    with pytest.raises(ConfigError, match="one per model"):
        build_server_config(serve_args("x", "y", "z", "--served-model-name", "one", "two"), {})


def test_load_format_dummy_reaches_the_engine_for_random_weight_benchmarks():
    (spec,) = build_server_config(serve_args("/models/q", "--load-format", "dummy"), {}).models
    assert spec.engine_args()["load_format"] == "dummy"
    (spec,) = build_config(["/models/q"]).models
    assert spec.engine_args()["load_format"] == "auto"


def test_engine_flags_reach_the_engine_and_are_checked():
    (spec,) = build_server_config(serve_args("/models/q", "--num-scheduler-steps", "8", "--enforce-eager"), {}).models
    assert spec.engine_args()["num_scheduler_steps"] == 8 and spec.engine_args()["enforce_eager"] is True
    (spec,) = build_config(["/models/q"]).models
    assert spec.engine_args()["num_scheduler_steps"] == 1 and spec.engine_args()["enforce_eager"] is False
    with pytest.raises(ConfigError, match="num_scheduler_steps must be >= 1"):
        build_server_config(serve_args("/models/q", "--num-scheduler-steps", "0"), {})


def test_hub_references_are_served_under_their_repo_name():
    (spec,) = build_config(["hf:Qwen/Qwen3-4B@main"]).models
    assert spec.name == "Qwen/Qwen3-4B" and spec.aliases == ["hf:Qwen/Qwen3-4B@main"]


@pytest.mark.parametrize("text, message", [
    ("[models.x]\nmodel = 'a'\nmax_model_length = 5\n", "unknown key.*max_model_length"),
    ("[models.x]\nmax_model_len = 5\n", "needs `model`"),
    ("[models.x]\nmodel = 'a'\nmax_model_len = 'long'\n", "max_model_len"),
    ("[models.x]\nmodel = 'a'\nkeep_alive = 'soon'\n", "keep_alive"),
    ("[models.x]\nmodel = 'a'\n[models.y]\nmodel = 'b'\naliases = ['x']\n", "used by both"),
    ("[serve]\nport = 1\n", "unknown section"),
    ("[models.x]\nmodel = 'a'\nsampling = { temprature = 1 }\n", "unknown sampling default.*temprature"),
    ("[models.x\n", "cannot parse"),
    ("[models.x]\nmodel = 'a'\ngpu_memory_utilization = 1.5\n", "gpu_memory_utilization"),
    ("[models.x]\nmodel = 'a'\nload_format = 'gguf'\n", "load_format must be auto or dummy"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(file=path)


@pytest.mark.parametrize("name, text, message", [
    ("bad.toml", "server = 5\n", r"\[server\] must be a table of settings, got 5"),
    ("bad.toml", "server = []\n", r"\[server\] must be a table of settings, got \[\]"),
    ("bad.yaml", "defaults: [1]\n", r"\[defaults\] must be a table of settings"),
    ("bad.yaml", "models:\n  a: {model: [b\n", r"cannot parse .*bad.yaml: .*\(at line 3, column 1\)"),
])
def test_a_section_that_is_not_a_table_or_broken_yaml_is_one_line_naming_it(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    assert main(["serve", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err


@pytest.mark.parametrize("argv, message", [
    (["--timeout-keep-alive", "nan"], "timeout_keep_alive must be a number of seconds >= 0, got nan"),
    (["--header-timeout", "-1"], "header_timeout must be a number of seconds >= 0, got -1.0"),
    (["--shutdown-timeout", "inf"], "shutdown_timeout must be a number of seconds >= 0, got inf"),
    (["--limit-concurrency", "0"], "limit_concurrency must be >= 1, got 0"),
])
def test_a_server_timeout_or_connection_limit_out_of_range_is_refused_naming_it(argv, message):
    """--timeout-keep-alive nan used to start a server."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_server_config(serve_args("/models/q", *argv), {})


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config file not found" in err


def test_durations_and_sizes():
    assert parse_duration("1h30m") == 5400 and parse_duration(45) == 45 and parse_duration("-1") is None
    assert parse_size("512MiB") == 512 << 20 and parse_size("1.5GB") == 1_500_000_000 and parse_size(1024) == 1024


def test_every_engine_setting_is_a_config_key_and_reaches_the_engine(tmp_path):
    # declared once in EngineArgs; the config file, the flags and the offline LLM derive from it
    from dataclasses import fields

    from corral.config import EngineArgs, EngineConfig
    values = {"dtype": "float16", "device": "cpu", "max_model_len": 64, "max_num_seqs": 3,
              "max_num_batched_tokens": 77, "block_size": 32, "gpu_memory_utilization": 0.5, "num_kv_blocks": 9,
              "kv_cache_memory_bytes": 1234, "kv_cache_dtype": "fp8", "enable_prefix_caching": False, "attention_backend": "torch",
              "enforce_eager": True, "num_scheduler_steps": 2, "async_scheduling": False, "seed": 7, "step_log": "steps.jsonl",
              "load_format": "dummy", "tensor_parallel_size": 2, "task": "embed", "pooling": "mean",
              "normalize": False}
    assert set(values) == {f.name for f in fields(EngineArgs)}
    lines = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in values.items())
    path = tmp_path / "serve.toml"
    path.write_text(f"[models.m]\nmodel = 'x'\n{lines}\n")
    assert build_config(file=path, env={}).models[0].engine_args() == values
    assert set(values) <= set(EngineConfig.__dataclass_fields__)


def test_every_engine_setting_with_help_is_a_serve_flag():
    from dataclasses import fields

    from corral.config import EngineArgs
    documented = [f for f in fields(EngineArgs) if f.metadata.get("help")]
    assert {"max_model_len", "max_num_seqs", "num_scheduler_steps", "kv_cache_memory_bytes"} <= {
        f.name for f in documented}
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    dests = {a.dest for a in serve._actions}
    assert {f.name for f in documented} <= dests
