"""corral pull / list / show / rm, and the one-line errors bad input gets."""
import json

import pytest

from corral.cli import main
from tests.sources.helpers import GATED, TINY


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_pull_list_show_rm(hf_hub, capsys, repos):
    code, out, _ = run(capsys, "pull", f"hf:{TINY}")
    assert code == 0 and "ready in" in out
    code, out, _ = run(capsys, "list")
    assert code == 0 and f"hf:{TINY}" in out and "ready" in out and "KB" in out
    code, out, _ = run(capsys, "list", "--json")
    (row,) = json.loads(out)
    assert row["source"] == "hf" and row["repo"] == TINY and row["revision"] == repos[TINY].commit
    code, out, _ = run(capsys, "show", f"hf:{TINY}")
    assert code == 0 and "LlamaForCausalLM" in out and "model.safetensors" in out and hf_hub.url in out
    code, out, _ = run(capsys, "rm", f"hf:{TINY}")
    assert code == 0 and "removed" in out
    code, out, _ = run(capsys, "list")
    assert "no models" in out


def test_pull_by_manifest_name_records_it(hf_hub, tiny_manifest, capsys):
    assert run(capsys, "pull", tiny_manifest)[0] == 0
    code, out, _ = run(capsys, "list")
    assert out.splitlines()[1].startswith(tiny_manifest)
    code, out, _ = run(capsys, "show", tiny_manifest)
    assert "max_model_len: 256" in out and "license: MIT" in out
    assert run(capsys, "rm", tiny_manifest)[0] == 0


def test_list_all_shows_the_known_manifests(capsys):
    code, out, _ = run(capsys, "list", "--all")
    assert code == 0 and "qwen3-4b " in out and "llama-2-7b-chat" in out and "not pulled" in out


def test_show_of_a_model_not_pulled_says_how_to_pull_it(capsys):
    code, out, _ = run(capsys, "show", "qwen3-4b")
    assert code == 0 and "Qwen/Qwen3-4B" in out and "corral pull qwen3-4b" in out


@pytest.mark.parametrize("argv, expected", [
    (["pull", "qwen3-4"], "did you mean qwen3-4b"),
    (["pull", "hf:corral-test/nope"], "corral-test/nope does not exist on the Hugging Face Hub"),
    (["pull", f"hf:{GATED}"], "HF_TOKEN"),
    (["rm", "qwen3-4b"], "no copy of qwen3-4b"),
    (["pull", "qwen3-4b", "--source", "ollama"], "unknown source 'ollama'"),
])
def test_bad_input_gets_one_line_and_a_nonzero_exit(hf_hub, capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code != 0 and expected in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("corral: error:")


def test_an_unreachable_hub_gets_one_line(hf_down, capsys):
    code, _, err = run(capsys, "pull", f"hf:{TINY}", "--source", "hf")
    assert code != 0 and hf_down in err and "--source modelscope" in err and len(err.strip().splitlines()) == 1
