"""The CLI as a user meets it when something is wrong: a bad flag, a bad source, a CUDA device that is not
there, a reader that leaves early. Each is one line on stderr, never a traceback."""
import subprocess
import sys
import textwrap

import pytest
import torch

from corral.cli import main


def test_a_bad_log_level_is_a_usage_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--log-level", "loud", "list"])
    assert exit_info.value.code == 2 and "invalid choice: 'LOUD'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_generate_on_a_cuda_device_that_is_not_there_is_one_line(tiny_model_dirs, capsys):
    assert main(["generate", str(tiny_model_dirs["llama"]), "hi", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("corral: error: --device cuda: no CUDA device") and len(err.splitlines()) == 1


def serve_args(*argv):
    from corral.cli import build_parser
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize("argv, env, expected", [
    (["/models/q", "--source", "ollama"], {}, "unknown source 'ollama'"),
    (["/models/q"], {"CORRAL_SOURCE": "modelscop"}, "unknown source 'modelscop'"),
] + ([] if torch.cuda.is_available() else [(["/models/q", "--device", "cuda:0"], {}, "no CUDA device")]))
def test_serve_refuses_a_bad_source_or_device_before_it_starts(argv, env, expected, monkeypatch):
    from corral.commands.serve import build_server_config
    monkeypatch.delenv("CORRAL_SOURCE", raising=False)
    with pytest.raises(Exception, match=expected):
        build_server_config(serve_args(*argv), env)


def test_a_reader_that_leaves_early_gets_no_broken_pipe_error():
    child = textwrap.dedent("""
        import sys
        import corral.commands.models as models
        models.list_models = lambda args: [print("x" * 100) for _ in range(20000)] and 0
        from corral.cli import main
        sys.exit(main(["list"]))
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(10)
    process.stdout.close()
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "Broken pipe" not in err and "BrokenPipeError" not in err


def test_python_dash_m_corral_cli_gives_the_same_one_line_errors():
    """Run as __main__, cli.py once caught its own CLIError class, not the one the commands raise."""
    done = subprocess.run([sys.executable, "-m", "corral.cli", "plugins", "uninstall", "corral"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("corral: error: that would uninstall corral itself")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, env, expected", [
    (["ps", "--host", "bad host"], {}, "corral: error: --host: 'bad host' is not a host name or an IP address"),
    (["stop", "m", "--host", "http://x"], {}, "corral: error: --host: 'http://x' is not a host name"),
    (["run", "m", "hi"], {"CORRAL_HOST": "[::1"}, "corral: error: CORRAL_HOST: '[::1' is not a host name"),
    (["ps"], {"CORRAL_PORT": "abc"}, "corral: error: CORRAL_PORT must be a port number from 1 to 65535, got 'abc'"),
    (["ps"], {"CORRAL_PORT": "70000"}, "corral: error: CORRAL_PORT must be a port number from 1 to 65535"),
])
def test_a_bad_server_address_is_one_line_naming_the_flag_or_variable(argv, env, expected, monkeypatch, capsys):
    """`--host 'bad host'` was a traceback, `--host http://x` said only 'Invalid IPv6 URL', and `corral run`
    quietly loaded the model in this process instead."""
    for name in ("CORRAL_HOST", "CORRAL_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected) and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("port", ["0", "-1", "65536", "eighty"])
def test_a_port_flag_out_of_range_is_a_usage_error(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ps", f"--port={port}"])
    assert exit_info.value.code == 2
    assert f"argument --port: must be a port number from 1 to 65535, got '{port}'" in capsys.readouterr().err


def test_pull_of_an_unknown_source_prefix_is_one_line_without_asking_a_hub(capsys, monkeypatch, tmp_path):
    """It was taken for the hub id 'zz:Org/Name': a wait on every hub, then 'cannot reach' each of them."""
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were it asked, the error would name it
    assert main(["pull", "zz:Org/Name"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("corral: error: 'zz:Org/Name': unknown source prefix 'zz:'") and len(err.splitlines()) == 1
