"""corral run / ps / stop / --version, Ollama's CLI: against a real server on loopback (found by CORRAL_PORT, with
CORRAL_API_KEY) and, with no server there, in this process. References: the server's OpenAI route for the same
conversation at temperature 0, and the offline corral.LLM for the in-process answer."""
import io
import sys

import httpx
import pytest

from corral.cli import main
from tests.server.helpers import API_KEY, ServerThread, free_port

GREEDY = ["--temperature", "0", "--seed", "3", "--num-predict", "12"]


@pytest.fixture(scope="module")
def server(tiny_model_dirs):
    from corral.server.config import build_config
    config = build_config([str(tiny_model_dirs["llama"])], served_names=["tiny-llama"], server={"api_key": API_KEY},
                          model_defaults={"max_model_len": 256, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    running = ServerThread(config).start()
    yield running
    running.stop()


@pytest.fixture
def at_server(server, monkeypatch):
    monkeypatch.setenv("CORRAL_PORT", str(server.config.port))
    monkeypatch.setenv("CORRAL_API_KEY", API_KEY)
    monkeypatch.delenv("CORRAL_HOST", raising=False)
    return server


@pytest.fixture
def no_server(monkeypatch):
    monkeypatch.setenv("CORRAL_PORT", str(free_port()))
    monkeypatch.delenv("CORRAL_HOST", raising=False)


def reference(server, messages: list[dict]) -> str:
    response = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": "tiny-llama", "messages": messages, "temperature": 0, "seed": 3,
                                "max_tokens": 12}, timeout=60)
    return response.json()["choices"][0]["message"]["content"]


def test_version_prints_corral_s_version(capsys):
    from corral.version import version
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"corral version {version()}\n"


def test_run_with_a_prompt_prints_the_server_s_answer(at_server, capsys):
    assert main(["run", "tiny-llama", "What", "is", "Paris?", *GREEDY]) == 0
    expected = reference(at_server, [{"role": "user", "content": "What is Paris?"}])
    assert capsys.readouterr().out == expected + "\n"


def test_run_without_a_prompt_chats_over_stdin_until_bye(at_server, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nAnd then?\n/bye\nnot read\n"))
    assert main(["run", "tiny-llama:latest", *GREEDY]) == 0
    first = reference(at_server, [{"role": "user", "content": "Hello"}])
    second = reference(at_server, [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": first},
                                   {"role": "user", "content": "And then?"}])
    assert capsys.readouterr().out == f"{first}\n{second}\n"


def test_ps_lists_the_loaded_model_and_stop_unloads_it(at_server, capsys):
    assert main(["run", "tiny-llama", "Hi", "--num-predict", "1"]) == 0
    capsys.readouterr()
    assert main(["ps"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert row.startswith("tiny-llama:latest") and "100% CPU" in row and "256" in row and "Forever" in row
    assert main(["stop", "tiny-llama"]) == 0
    assert main(["ps"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert main(["run", "tiny-llama", "Hi", "--num-predict", "1"]) == 0  # it loads again


def test_run_of_a_model_the_server_does_not_serve_is_one_line(at_server, capsys):
    assert main(["run", "no-such-model", "Hi"]) == 1
    err = capsys.readouterr().err
    assert err == 'corral: error: model "no-such-model" not found, try pulling it first\n'


@pytest.mark.parametrize("command", [["ps"], ["stop", "tiny-llama"]])
def test_without_a_server_ps_and_stop_say_so_in_one_line(no_server, capsys, command):
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.startswith("corral: error: no corral server answers at http://127.0.0.1:") and len(err.splitlines()) == 1


def test_run_without_a_server_answers_in_this_process(no_server, tiny_model_dirs, capsys):
    from corral import LLM, SamplingParams
    model = str(tiny_model_dirs["llama"])
    assert main(["run", model, "What is Paris?", *GREEDY, "--device", "cpu", "--max-model-len", "256"]) == 0
    out, err = capsys.readouterr()
    llm = LLM(model, device="cpu", max_model_len=256, kv_cache_memory_bytes=16 << 20)
    (expected,) = llm.chat([{"role": "user", "content": "What is Paris?"}],
                           SamplingParams(temperature=0, seed=3, max_tokens=12))
    assert out == expected.outputs[0].text + "\n" and "no server answers" in err
