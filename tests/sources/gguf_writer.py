"""Write a Llama HF directory as a GGUF file the way llama.cpp's converter does (float32 tensors, Q/K
rows permuted for its rotary layout, byte-level BPE vocabulary and merges, chat template)."""
import json
from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model_dir: Path, out: Path, tensor_type: str = "F32") -> Path:
    """`tensor_type` F32, F16 or Q8_0 (matrices whose rows split into 32-value blocks; norms stay F32)."""
    import gguf
    from safetensors.numpy import load_file
    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // n_head

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(config["vocab_size"])

    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"]: t["id"] for t in tok["added_tokens"] if t.get("special")}
    tokens = [t for t, _ in vocab]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    template = (model_dir / "chat_template.jinja")
    w.add_chat_template(template.read_text() if template.exists() else tok_config["chat_template"])

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm":
                 "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        tensor = tensor.astype(np.float32)
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            if module == "self_attn.q_proj":
                tensor = _permute(tensor, n_head)
            elif module == "self_attn.k_proj":
                tensor = _permute(tensor, n_kv)
            name = f"blk.{i}.{per_layer[module]}.weight"
        else:
            name = names[name]
        if tensor_type == "F16":
            tensor = tensor.astype(np.float16)
        elif tensor_type == "Q8_0" and tensor.ndim == 2 and tensor.shape[-1] % 32 == 0:
            kind = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(tensor, kind), raw_dtype=kind)
            continue
        w.add_tensor(name, tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
