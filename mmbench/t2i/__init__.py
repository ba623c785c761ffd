"""Text-to-image on Shapes: what scores a generator (issue 35), before any generator exists.

Shapes' renderer knows the truth of every scene, so an image generated from a caption can be read back
into a scene and the caption checked exactly, instead of by a pretrained detector that is itself wrong a
fair share of the time (GenEval, T2I-CompBench).

    oracle      `SceneOracle`: a small classifier of each grid cell's content, trained on Shapes' own
                renders and cached beside the Shapes cache (`shapes_oracle`); reads images into scenes
    criteria    per caption type, what a scene gets right of a caption's claim: named objects present,
                colour bound to the right shape, counts, relation, nothing extra (`compositional_scores`)
    scores      the Frechet distance on the oracle's features (`frechet_distance`) and the image-text
                agreement of a trained ITC model, CLIPScore's analogue (`agreement`)

The oracle and the criteria are Shapes' own (they import it); `scores` knows no dataset. A `t2i`
evaluation protocol is meant to receive the oracle through the data config, as the diagnostics protocol
receives Shapes' counterfactual renderer (docs/design.md, "data -> protocol").
"""

from mmbench.t2i.criteria import CAPTION_TYPES, CRITERIA, compositional_scores, inventory_counts, judge
from mmbench.t2i.oracle import ORACLE_VERSION, OracleSettings, SceneOracle, random_scenes, shapes_oracle, train_oracle
from mmbench.t2i.scores import agreement, frechet_distance

__all__ = [
    "CAPTION_TYPES",
    "CRITERIA",
    "ORACLE_VERSION",
    "OracleSettings",
    "SceneOracle",
    "agreement",
    "compositional_scores",
    "frechet_distance",
    "inventory_counts",
    "judge",
    "random_scenes",
    "shapes_oracle",
    "train_oracle",
]
