import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from corral.engine.detokenizer import IncrementalDetokenizer
from corral.sampling_params import SamplingParams

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello streaming tokens, hello again.",
    "User: write a poem\nAssistant: here is a poem about the sea.",
]
CHINESE = "你好，世界。今天天气很好，我们去公园散步吧。小猫在睡觉。"
EMOJI = "party time 🎉🦀🚀 done 👍🏽"
TEXT = f"Sure! {CHINESE} {EMOJI} The end."
PROMPT = "User: 写一首诗\nAssistant:"


@pytest.fixture(scope="module")
def bytelevel():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((ENGLISH + [CHINESE, EMOJI]) * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def metaspace():
    """Llama-2 style: `▁` word prefixes, byte fallback for what the vocab lacks, Llama-2's decoder."""
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    base.train_from_iterator(ENGLISH * 4, trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>"]))
    trained = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    for piece in trained["vocab"]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab, [tuple(m) for m in trained["merges"]], unk_token="<unk>",
                               byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


def stream(tok, prompt_ids, output_ids, chunk=1, **params):
    """Feeds `output_ids` `chunk` at a time as an engine would; returns (detokenizer, deltas, stop)."""
    detok = IncrementalDetokenizer(tok, prompt_ids, SamplingParams(**params))
    deltas, stop = [], None
    for i in range(0, len(output_ids), chunk):
        stop = detok.update(output_ids[i:i + chunk])
        if stop is not None:
            break
        deltas.append(detok.get_delta(finished=False))
    deltas.append(detok.get_delta(finished=True))
    return detok, deltas, stop


@pytest.mark.parametrize("name,chunk", [("bytelevel", 1), ("bytelevel", 3), ("smollm2", 1)])
def test_deltas_concatenate_to_full_decode(request, name, chunk):
    tok = request.getfixturevalue(name)
    out = encode(tok, TEXT)
    detok, deltas, _ = stream(tok, encode(tok, PROMPT), out, chunk=chunk)
    assert "".join(deltas) == detok.output_text == tok.decode(out) == TEXT


@pytest.mark.parametrize("name", ["bytelevel", "smollm2", "metaspace"])
def test_no_delta_holds_a_half_decoded_character(request, name):
    tok = request.getfixturevalue(name)
    out = encode(tok, TEXT)
    assert any("\ufffd" in tok.decode([i]) for i in out)
    _, deltas, _ = stream(tok, encode(tok, PROMPT), out)
    assert not any("\ufffd" in d for d in deltas)


def test_output_ending_inside_a_character_drops_the_incomplete_character(bytelevel):
    tok = bytelevel
    out = encode(tok, "hi 猫")[:-1]
    assert tok.decode(out) == "hi \ufffd"
    detok, deltas, _ = stream(tok, [], out)
    assert "".join(deltas) == detok.output_text == "hi "
    assert not any("\ufffd" in d for d in deltas)


def test_metaspace_keeps_leading_space_of_first_output_word(metaspace):
    tok = metaspace
    prompt, out = encode(tok, "User: say hello"), encode(tok, "hello world")
    assert tok.convert_ids_to_tokens(out)[0].startswith("▁") and tok.decode(out) == "hello world"
    _, deltas, _ = stream(tok, prompt, out)
    assert "".join(deltas) == tok.decode(prompt + out)[len(tok.decode(prompt)):] == " hello world"


def test_metaspace_byte_fallback_streams_like_the_full_decode(metaspace):
    tok = metaspace
    prompt, out = [tok.bos_token_id] + encode(tok, PROMPT), encode(tok, TEXT)
    _, deltas, _ = stream(tok, prompt, out)
    prompt_text = tok.decode(prompt, skip_special_tokens=True)
    assert "".join(deltas) == tok.decode(prompt + out, skip_special_tokens=True)[len(prompt_text):]


def test_stop_string_spanning_tokens_truncates_output_and_is_reported(bytelevel):
    tok = bytelevel
    out, stop = encode(tok, TEXT), "去公园"
    assert not any(stop in tok.decode([i]) for i in out)
    detok, deltas, matched = stream(tok, [], out, stop=["never", stop])
    assert matched == stop
    assert "".join(deltas) == detok.output_text == TEXT[:TEXT.index(stop)]


def test_include_stop_str_in_output_keeps_the_stop_string(bytelevel):
    tok = bytelevel
    stop = "去公园"
    detok, deltas, matched = stream(tok, [], encode(tok, TEXT), stop=[stop], include_stop_str_in_output=True)
    assert matched == stop
    assert "".join(deltas) == detok.output_text == TEXT[:TEXT.index(stop) + len(stop)]


def test_earliest_stop_string_in_the_text_wins(bytelevel):
    tok = bytelevel
    out = encode(tok, TEXT)
    _, deltas, matched = stream(tok, [], out, chunk=len(out), stop=["The end", "世界"])
    assert matched == "世界"
    assert "".join(deltas) == TEXT[:TEXT.index("世界")]


def test_deltas_never_leak_the_start_of_a_stop_string(smollm2):
    tok = smollm2
    text = "Sure, here it is.\n\nUser: and more"
    detok, deltas, matched = stream(tok, [], encode(tok, text), stop=["\n\nUser:"])
    assert matched == "\n\nUser:"
    sent = ""
    for delta in deltas:
        sent += delta
        assert detok.output_text.startswith(sent)
    assert sent == "Sure, here it is."


def test_held_back_start_of_stop_string_is_released_when_it_does_not_complete(bytelevel):
    tok = bytelevel
    out = encode(tok, TEXT)
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=["去公园!"]))
    deltas = []
    for token_id in out:
        assert detok.update([token_id]) is None
        deltas.append(detok.get_delta(finished=False))
        assert not "".join(deltas).endswith(("去", "去公"))
    assert "".join(deltas) + detok.get_delta(finished=True) == TEXT


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens_matches_decode(smollm2, skip):
    tok = smollm2
    end = tok.convert_tokens_to_ids("<|im_end|>")
    out = encode(tok, "hello 你好") + [end] + encode(tok, " world")
    _, deltas, _ = stream(tok, encode(tok, PROMPT), out, skip_special_tokens=skip)
    assert "".join(deltas) == tok.decode(out, skip_special_tokens=skip)
    assert ("<|im_end|>" in "".join(deltas)) is not skip
