"""A model that the real hub clients downloaded serves exactly like the same model from a local path."""
import pytest

from corral.registry.sources import resolve_model
from tests.sources.helpers import TINY

PROMPTS = ["The capital of France is", "def main():", "Hello world! How are"]


def greedy(model: str) -> list[list[int]]:
    try:
        from corral import LLM, SamplingParams
    except ImportError as e:  # the engine is written alongside the sources
        pytest.skip(f"corral.llm does not import yet: {e}")
    llm = LLM(model, max_model_len=128)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("hub", ["hf", "ms"])
def test_greedy_output_of_the_downloaded_model_matches_the_local_one(hub, hf_hub, ms_hub, tiny_dir):
    expected = greedy(str(tiny_dir))
    served = greedy(f"{hub}:{TINY}")  # LLM resolves the reference: download, verify, load
    assert served == expected
    assert (hf_hub if hub == "hf" else ms_hub).gets()  # it did come from the hub
    assert resolve_model(f"{hub}:{TINY}").parent.name == hub
