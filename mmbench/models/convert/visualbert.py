"""VisualBERT (`VisualBertModel`) -> model=visualbert with encoder/vision=region_feats:
TextTransformer (depth 0) + RegionFeatureEncoder (no [IMG] token, no box embedding) + MergedFusion (post-norm).

VisualBERT normalises the *sum* of all embeddings with one LayerNorm, per token:

    text:   LN(word + position + token_type[0])          -> text_encoder (type 0 folded into positions)
    region: LN(W f + b + visual_token_type[1] + visual_position[0])
                                                         -> vision_encoder.embed: LN(W f + b'), b' = b + both rows
    encoder.layer.i -> fusion.blocks.i (BERT post-norm);  pooler -> fusion.pooler

The LayerNorm is shared, so both encoders receive a copy of it; fusion.type_embeddings are zero
(the token types already live inside the LayerNorm's input). Region features are precomputed
(`region_feats`, visual_embedding_dim wide); VisualBERT uses no boxes.
"""

from __future__ import annotations

import torch

from mmbench.models.convert.common import StateMap, activation, bert_layer, bert_text_embeddings, single_width_sizes
from mmbench.models.fusion.merged import MergedFusion
from mmbench.models.text import TextTransformer
from mmbench.models.vision.region import RegionFeatureEncoder

MODEL_TYPE = "visual_bert"
PARTS = {"text_encoder": TextTransformer, "vision_encoder": RegionFeatureEncoder, "fusion": MergedFusion}


def sizes(config) -> dict:
    return {
        **single_width_sizes(
            config, text_depth=0, vision_depth=0, fusion_depth=config.num_hidden_layers, prenorm=False
        ),
        "region_feat_dim": config.visual_embedding_dim,
    }


def part_kwargs(config, processor: dict) -> dict[str, dict]:
    eps = config.layer_norm_eps
    return {
        "text_encoder": dict(norm_eps=eps, embed_norm=True),
        "vision_encoder": dict(norm_eps=eps, img_token=False, boxes=False),
        "fusion": dict(norm_eps=eps, act_layer=activation(config.hidden_act)),
    }


def convert(sm: StateMap, config, model) -> None:
    bert_text_embeddings(sm, "text_encoder", "embeddings", model.text_encoder.max_len)

    bias = (
        sm.get("embeddings.visual_projection.bias")
        + sm.get("embeddings.visual_token_type_embeddings.weight")[1]
        + sm.get("embeddings.visual_position_embeddings.weight")[0]
    )
    sm.copy("vision_encoder", "embed.feat_fc.weight", "embeddings.visual_projection.weight")
    sm.put("vision_encoder", "embed.feat_fc.bias", bias)
    sm.affine("vision_encoder", "embed.feat_norm", "embeddings.LayerNorm")

    sm.put("fusion", "type_embeddings.weight", torch.zeros(2, config.hidden_size))
    for i in range(config.num_hidden_layers):
        bert_layer(sm, "fusion", f"blocks.{i}", f"encoder.layer.{i}")
    sm.affine("fusion", "pooler.dense", "pooler.dense")
