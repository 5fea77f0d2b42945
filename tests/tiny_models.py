"""Tiny random models built from real transformers configs, saved as HF directories."""
import json
from pathlib import Path

import torch

CORPUS = [
    "The capital of France is Paris. The capital of China is Beijing.",
    "Hello world! How are you today? I am fine, thank you.",
    "中文文本：你好，世界。北京是中国的首都。",
    "def main():\n    return 42  # code",
] * 20


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def tiny_config(arch: str, vocab_size: int = 512, **overrides):
    from transformers import LlamaConfig, Qwen3Config
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  initializer_range=0.2, eos_token_id=2, bos_token_id=None, pad_token_id=0)
    common.update(overrides)
    if arch == "qwen3":
        return Qwen3Config(**{"head_dim": 32, **common})
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(arch)


def build_model(arch: str, out_dir: Path, seed: int = 0, dtype=torch.float32, legacy_rope: bool = False,
                **overrides) -> Path:
    """Save a random model and a tiny tokenizer into out_dir; returns out_dir. legacy_rope: write
    config.json's RoPE as transformers 4 checkpoints do (`rope_theta`, `rope_scaling`)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides)).to(dtype)
    model.save_pretrained(out_dir)
    build_tokenizer().save_pretrained(out_dir)
    if legacy_rope:
        path = Path(out_dir) / "config.json"
        config = json.loads(path.read_text())
        rope = config.pop("rope_parameters")
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = None if rope.get("rope_type") == "default" else rope
        path.write_text(json.dumps(config, indent=2))
    return Path(out_dir)


def load_reference(model_dir: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def build_embedding_model(out_dir: Path, seed: int = 0) -> Path:
    """A random Qwen3 decoder saved as Qwen3-Embedding is: the bare model's weights (no `model.` prefix,
    no LM head), config.architectures Qwen3ForCausalLM, and sentence-transformers modules that pool the
    last token and normalise."""
    from transformers import AutoModel
    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config("qwen3")).to(torch.float32).save_pretrained(out_dir)
    build_tokenizer().save_pretrained(out_dir)
    path = Path(out_dir) / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "architectures": ["Qwen3ForCausalLM"]}, indent=2))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (Path(out_dir) / "modules.json").write_text(json.dumps(modules, indent=2))
    (Path(out_dir) / "1_Pooling").mkdir(exist_ok=True)
    (Path(out_dir) / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
         "pooling_mode_lasttoken": True, "include_prompt": True}, indent=2))
    return Path(out_dir)
