"""BERT (`BertModel`) -> the text encoder (`TextTransformer`, post-norm) of any preset.

Maps the embeddings (token type 0 folded into the positions), the first `text_depth` layers and the
pooler (the text encoder's `pooling` becomes BERT's `Pooler`). Later BERT layers are reported as
unused: LXMERT, for instance, starts its 9 language layers from BERT's first 9. The text encoder's
width must be BERT's hidden size; vision encoder and fusion are left as built.
"""

from __future__ import annotations

from mmbench.models.convert.common import StateMap, activation, bert_layer, bert_text_embeddings
from mmbench.models.layers import Pooler
from mmbench.models.text import TextTransformer

MODEL_TYPE = "bert"
PARTS = {"text_encoder": TextTransformer}


def sizes(config) -> dict:
    return {"text_heads": config.num_attention_heads}


def part_kwargs(config, processor: dict) -> dict[str, dict]:
    return {
        "text_encoder": dict(
            mlp_ratio=config.intermediate_size / config.hidden_size,
            prenorm=False,
            norm_eps=config.layer_norm_eps,
            act_layer=activation(config.hidden_act),
            pooling=Pooler(config.hidden_size),
        )
    }


def convert(sm: StateMap, config, model) -> None:
    text = model.text_encoder
    width = text.word_embeddings.embedding_dim
    if width != config.hidden_size:
        raise ValueError(
            f"BERT hidden size {config.hidden_size} != the text encoder's width {width}; "
            f"choose sizes with model.text_dim={config.hidden_size} (e.g. model.size=base)"
        )
    depth = len(text.stack.blocks)
    if depth > config.num_hidden_layers:
        raise ValueError(f"the text encoder has {depth} layers but the BERT checkpoint only {config.num_hidden_layers}")
    bert_text_embeddings(sm, "text_encoder", "embeddings", text.max_len)
    for i in range(depth):
        bert_layer(sm, "text_encoder", f"stack.blocks.{i}", f"encoder.layer.{i}")
    sm.affine("text_encoder", "pooling.dense", "pooler.dense")
