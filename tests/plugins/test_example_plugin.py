"""The example plugin package (examples/corral-qwen2), as a user meets it: `corral plugins install` puts it
in this environment, a fresh `corral plugins` lists it, a tiny random Qwen2 generates and is served with
transformers' greedy tokens, and `corral plugins uninstall` removes it. Packages that are not plugins, or
do not import, are reported; a broken or duplicate plugin never stops the server serving the others."""
import importlib
import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import torch

from corral.cli import main
from corral.commands.plugins import describe
from corral.registry.architectures import UnknownArchitectureError
from corral.registry.plugins import PluginManager
from tests.models.helpers import make_prompts, reference_generate
from tests.tiny_models import build_model, build_tokenizer, load_reference

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "./examples/corral-qwen2"
PACKAGE = "corral-qwen2"
# pip builds with the setuptools already installed, and fetches nothing (a venv of Python >= 3.12 has no
# setuptools unless something installed it: then pip fetches it into an isolated build environment)
OFFLINE = ("--no-deps",) + (("--no-build-isolation",) if importlib.util.find_spec("setuptools") else ())
NUM_NEW_TOKENS = 16


def corral(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """The `corral` command of this environment, in a fresh process, from the repository root."""
    script = Path(sys.executable).with_name("corral")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "corral.cli"]
    return subprocess.run(command + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def installed(package: str) -> bool:
    importlib.invalidate_caches()
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def make_package(root: Path, name: str, module: str, source: str, entry_point: str | None = None) -> Path:
    """A one-module package on disk, with an entry point in group `corral` when `entry_point` is given."""
    path = root / name
    path.mkdir()
    (path / f"{module}.py").write_text(textwrap.dedent(source))
    toml = f'[project]\nname = "{name}"\nversion = "0.0.1"\n[tool.setuptools]\npy-modules = ["{module}"]\n'
    if entry_point:
        toml += f'[project.entry-points.corral]\n{entry_point} = "{module}"\n'
    (path / "pyproject.toml").write_text(toml)
    return path


@pytest.fixture(scope="module")
def install_result():
    result = corral("plugins", "install", EXAMPLE, *OFFLINE)
    yield result
    if installed(PACKAGE):
        corral("plugins", "uninstall", PACKAGE)


def ensure_installed(install_result):
    assert install_result.returncode == 0, install_result.stdout + install_result.stderr
    if not installed(PACKAGE):  # a test before this one uninstalled it
        result = corral("plugins", "install", EXAMPLE, *OFFLINE)
        assert result.returncode == 0, result.stdout + result.stderr
    importlib.invalidate_caches()


@pytest.fixture
def example_plugin(install_result):
    ensure_installed(install_result)


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    """A random 2-layer Qwen2 with its tokenizer, and the transformers model it was saved from."""
    from transformers import AutoModelForCausalLM, Qwen2Config
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.2, eos_token_id=2, bos_token_id=None, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # transformers starts biases at zero; random ones prove they are loaded and used
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                param.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2"
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out, model


def test_install_reports_what_the_example_registers(example_plugin, install_result):
    assert "installed plugin qwen2 0.1.0 from corral-qwen2: registers Qwen2ForCausalLM" in install_result.stdout


def test_a_fresh_corral_plugins_lists_the_example_with_its_hooks(example_plugin):
    listing = corral("plugins")
    assert listing.returncode == 0, listing.stderr
    assert "qwen2 0.1.0 (plugin from corral-qwen2, corral_qwen2)" in listing.stdout
    entry = next(p for p in json.loads(corral("plugins", "--json").stdout) if p["name"] == "qwen2")
    assert entry["package"] == PACKAGE and entry["version"] == "0.1.0" and not entry["builtin"]
    assert entry["hooks"] == ["register_architectures"]
    assert entry["registered"] == ["Qwen2ForCausalLM"] and entry["error"] is None and not entry["conflicts"]


def test_tracing_logs_the_example_s_hook_call(example_plugin):
    traced = corral("plugins", env={**os.environ, "CORRAL_TRACE_PLUGINS": "1"})
    assert "plugin qwen2: register_architectures('Qwen2ForCausalLM', 'corral_qwen2.model:Qwen2ForCausalLM')" \
        in traced.stderr


def test_the_allow_list_can_leave_the_example_out(example_plugin):
    plugins = {p["name"]: p for p in describe(PluginManager(allow=["qwen3", "llama"]))}
    assert plugins["qwen2"]["enabled"] is False and plugins["qwen3"]["enabled"] is True
    assert "Qwen2ForCausalLM" not in PluginManager(allow=["qwen3", "llama"]).architectures().names()


def test_a_tiny_qwen2_generates_exactly_what_transformers_does(example_plugin, tiny_qwen2):
    from corral import LLM, SamplingParams
    model_dir, reference = tiny_qwen2
    llm = LLM(str(model_dir), dtype="float32", max_num_batched_tokens=48)  # chunked prefill too
    assert type(llm.engine.core.runner.model).__module__ == "corral_qwen2.model"
    prompts = make_prompts()
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True))
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == reference_generate(reference, prompt, NUM_NEW_TOKENS)[0]


BROKEN_PLUGINS = {
    # entry-point name: (distribution, module, source)
    "broken": ("corral-test-broken", "corral_test_broken", "import corral_test_missing_dependency\n"),
    "zz-dup": ("corral-test-dup", "corral_test_dup", """
        from corral import hookimpl

        @hookimpl
        def register_architectures(register):
            register("Qwen2ForCausalLM", "corral_test_dup:NotAModel")
    """),
}


@pytest.fixture(scope="module")
def broken_plugins_env(tmp_path_factory) -> dict:
    """An environment whose PYTHONPATH adds a plugin that fails to import and one that registers
    Qwen2ForCausalLM again (it loses: between third-party plugins the first name, qwen2, wins)."""
    root = tmp_path_factory.mktemp("broken-plugins")
    for name, (dist, module, source) in BROKEN_PLUGINS.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "entry_points.txt").write_text(f"[corral]\n{name} = {module}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_PLUGINS", "CORRAL_TRACE_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def test_corral_plugins_reports_the_broken_and_the_duplicate_plugin(example_plugin, broken_plugins_env):
    listing = corral("plugins", env=broken_plugins_env)
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert "broken 0.0.1" in out and "error: ModuleNotFoundError" in out and "corral_test_missing_dependency" in out
    assert "conflict: 'Qwen2ForCausalLM' is also registered by zz-dup; qwen2 wins" in out
    assert "rule: when two plugins register one name" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(install_result, tiny_qwen2, broken_plugins_env, tmp_path_factory):
    """`corral serve` in its own process, with the broken plugins present, serving the tiny Qwen2 (through
    the installed example) and a tiny Llama (a built-in)."""
    pytest.importorskip("uvicorn", reason="uvicorn is not installed")
    ensure_installed(install_result)
    llama_dir = build_model("llama", tmp_path_factory.mktemp("llama") / "tiny-llama")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    script = Path(sys.executable).with_name("corral")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "corral.cli"]
    command += ["serve", str(tiny_qwen2[0]), str(llama_dir), "--host", "127.0.0.1", "--port", str(port),
                "--device", "cpu", "--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory", "8MiB"]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=broken_plugins_env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"corral serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                models = httpx.get(f"{base}/v1/models", timeout=5).json()["data"]
                if all(m["state"] in ("ready", "error") for m in models):
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"corral serve did not load its models in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, {"tiny-qwen2": tiny_qwen2[1], "tiny-llama": load_reference(llama_dir)}, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def served_matches_reference(base: str, name: str, reference) -> None:
    """Greedy completions over HTTP: each token (as logprobs shows it) and its logprob are transformers'."""
    tokenizer = build_tokenizer()
    for prompt in make_prompts()[:4]:
        response = httpx.post(f"{base}/v1/completions", timeout=60, json={
            "model": name, "prompt": prompt, "max_tokens": NUM_NEW_TOKENS, "temperature": 0, "ignore_eos": True,
            "logprobs": 0})
        assert response.status_code == 200, response.text
        logprobs = response.json()["choices"][0]["logprobs"]
        tokens, expected = reference_generate(reference, prompt, NUM_NEW_TOKENS)
        assert logprobs["tokens"] == [tokenizer.decode([t]) for t in tokens]
        assert logprobs["token_logprobs"] == pytest.approx(expected, abs=1e-4)


def test_corral_serve_serves_the_plugin_s_architecture_with_transformers_greedy_output(server):
    base, references, log = server
    states = {m["id"]: m["state"] for m in httpx.get(f"{base}/v1/models").json()["data"]}
    assert states == {"tiny-qwen2": "ready", "tiny-llama": "ready"}, log.read_text()[-3000:]
    served_matches_reference(base, "tiny-qwen2", references["tiny-qwen2"])


def test_a_broken_plugin_leaves_the_server_serving_the_other_models(server):
    base, references, log = server
    assert httpx.get(f"{base}/health").status_code == 200
    served_matches_reference(base, "tiny-llama", references["tiny-llama"])
    assert "plugin broken failed to load and was skipped" in log.read_text()


def test_installing_a_package_that_is_not_a_plugin_says_so_and_corral_keeps_working(tmp_path):
    path = make_package(tmp_path, "corral-test-not-a-plugin", "corral_test_not_a_plugin", "VALUE = 1\n")
    try:
        result = corral("plugins", "install", str(path), *OFFLINE)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "corral-test-not-a-plugin was installed, but it is not a corral plugin" in result.stderr
        listing = corral("plugins")
        assert listing.returncode == 0 and "registers: LlamaForCausalLM" in listing.stdout
    finally:
        corral("plugins", "uninstall", "corral-test-not-a-plugin")


def test_installing_a_plugin_whose_import_fails_says_so_and_corral_keeps_working(tmp_path):
    path = make_package(tmp_path, "corral-test-import-error", "corral_test_import_error",
                        "import corral_test_missing_dependency\n", entry_point="import-error")
    try:
        result = corral("plugins", "install", str(path), *OFFLINE)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "plugin import-error from corral-test-import-error fails to load and is skipped" in result.stderr
        assert "corral_test_missing_dependency" in result.stderr
        listing = corral("plugins")
        assert listing.returncode == 0 and "registers: LlamaForCausalLM" in listing.stdout
        assert "error: ModuleNotFoundError" in listing.stdout
    finally:
        corral("plugins", "uninstall", "corral-test-import-error")


def test_uninstall_removes_the_example(example_plugin):
    result = corral("plugins", "uninstall", PACKAGE)
    assert result.returncode == 0, result.stderr
    assert "removed plugin(s) qwen2" in result.stdout
    assert not installed(PACKAGE)
    listing = corral("plugins")
    assert not any(line.startswith("qwen2 ") for line in listing.stdout.splitlines())
    with pytest.raises(UnknownArchitectureError, match="corral plugins install"):
        PluginManager().architectures().resolve(["Qwen2ForCausalLM"])


def test_uninstalling_corral_or_what_it_needs_is_refused(capsys):
    assert main(["plugins", "uninstall", "corral"]) == 1
    assert "would uninstall corral itself" in capsys.readouterr().err
    assert main(["plugins", "uninstall", "corral-qwen2", "Torch"]) == 1
    assert "corral itself needs Torch: not uninstalled" in capsys.readouterr().err
