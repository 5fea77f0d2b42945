from dataclasses import dataclass

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")  # what corral.layers.rotary computes


def positions_of(hf_config: dict) -> int:
    """The longest sequence the model was built for (its rotary tables end there)."""
    return hf_config.get("max_position_embeddings") or 2048


def rope_type(scaling: dict | None) -> str:
    return (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"


@dataclass(slots=True)
class ModelConfig:
    """The architecture facts a decoder needs, read from an HF config.json in either spelling
    (transformers 4 `rope_theta` / `rope_scaling`, transformers 5 `rope_parameters`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool = False

    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in hf]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        heads = hf["num_attention_heads"]
        kv_heads = hf.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        rope = dict(hf.get("rope_parameters") or {})
        scaling = hf.get("rope_scaling") or None
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = rope
        theta = hf.get("rope_theta") or rope.get("rope_theta") or 10000.0
        if rope_type(scaling) not in ROPE_TYPES:
            raise ValueError(f"rope scaling {rope_type(scaling)!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported; supported: silu")
        if sliding := _sliding_layers(hf):
            raise ValueError(f"sliding-window attention ({len(sliding)} of {hf['num_hidden_layers']} layers, window "
                             f"{hf['sliding_window']}) is not supported")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=positions_of(hf),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
        )

    def num_weight_params(self) -> int:
        """Parameters in the weight matrices and embeddings (norm scales and biases left out: a
        fraction of a percent): what the weights' memory is counted from."""
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = self.hidden_size * (2 * q + 2 * kv) + 3 * self.hidden_size * self.intermediate_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings


def _sliding_layers(hf: dict) -> list[int]:
    """The layers transformers runs with a window shorter than the model's positions: Qwen2/Qwen3
    `use_sliding_window` from layer `max_window_layers` on, else (Mistral style) every layer."""
    window = hf.get("sliding_window")
    positions = positions_of(hf)
    if window is None or window >= positions or hf.get("use_sliding_window") is False:
        return []
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first = hf.get("max_window_layers", 28) if hf.get("use_sliding_window") else 0  # transformers' default
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(hf["num_hidden_layers"])]
    return [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
