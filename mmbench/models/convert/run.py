"""Initialisation from an earlier mmbench run (`model.init_from=<run directory or .ckpt>`): training in stages.

BLIP-2 trains its Q-Former with ITC / ITM / image-grounded generation first (`model=blip2`), then feeds
the same Q-Former's queries to a language model (`model=blip2_lm`); LLaVA pre-trains the projector before
tuning everything. Each stage is a run; the next one starts from the previous run's checkpoint
(`checkpoints/best.ckpt`, else `last.ckpt`, of a run directory, or a given `.ckpt` file):

* every tensor of the checkpoint's model (the `model.` entries of its Lightning state dict) whose name,
  after the renames of `model.init_map` (`{old prefix: new prefix}`, first match; e.g. BLIP-2's
  `fusion.qformer.` -> `fusion.connector.qformer.`), is a tensor of this model is loaded, and must have
  its shape (the stages share their sizes: a different width is an error naming the tensor);
* the model's other tensors keep their fresh initialisation (e.g. the projector into the LM), and the
  checkpoint's tensors this model has no place for are dropped (e.g. stage 1's text tower); one log line
  lists both, by part. Objective heads are not carried over (each stage trains its own objectives), except
  what an objective declares it takes from the earlier run (`Objective.inherits`, `load_objectives`: e.g.
  objective t2i_ar's frozen image tokenizer, trained by stage 1's objective t2i_vqvae); all of that must be there.
* `model.init_parts` (a list of part names, e.g. `[language_model]`; default null: every part) takes the
  tensors of those parts only, and each of them must be in the checkpoint (a missing one is an error):
  a partial load by choice. The checkpoint's tensors of the other parts are left out even where this model
  has a place for them (e.g. the untrained vision encoder and connector of a text-only LM pretraining run,
  experiment=lm_stage0), and those parts keep their fresh initialisation.

`load` returns a report (the checkpoint, the chosen parts, and the names loaded, left fresh, left out by
`init_parts`, and not in this model); the run writes it to `init_from.json` in its directory
(mmbench/pipeline.py) and logs one line of it by part, so no partial load is silent.

The sizes, vocabulary and parts come from this run's config, unchanged (`adjust` is the identity); the
tokenizer is the same as long as both stages use the same data (the Shapes tokenizer is cached per data
config).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

CHECKPOINTS = ("best.ckpt", "last.ckpt")  # in a run directory's checkpoints/, the first that exists


def run_checkpoint(name: str) -> Path | None:
    """The checkpoint file `name` designates if it is an mmbench run directory or a `.ckpt` file, else None."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        return path
    if (path / "checkpoints").is_dir():
        return next((path / "checkpoints" / c for c in CHECKPOINTS if (path / "checkpoints" / c).is_file()), None)
    return None


def _described(tensor: torch.Tensor) -> str:
    """A tensor's shape, or its value when it is a non-float scalar (a setting kept in the state dict)."""
    return str(tensor.item()) if tensor.dim() == 0 and not tensor.is_floating_point() else str(tuple(tensor.shape))


def _parts(keys) -> str:
    counts = Counter(k.split(".")[0] for k in keys)
    return ", ".join(f"{part} ({n})" for part, n in sorted(counts.items())) or "none"


@dataclasses.dataclass
class RunInit:
    path: Path  # the checkpoint file
    rename: dict[str, str]  # old prefix -> new prefix
    parts: tuple[str, ...] | None = None  # the parts whose tensors are taken (model.init_parts); None: all

    @property
    def name(self) -> str:
        return str(self.path)

    def adjust(self, cfg: DictConfig, info):
        return cfg, info

    def part_kwargs(self) -> dict[str, dict]:
        return {}

    def _renamed(self, key: str) -> str:
        for old, new in self.rename.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    def load(self, model) -> dict:
        """Load the matching tensors into `model`; returns the report (see the module docstring)."""
        state = torch.load(self.path, map_location="cpu", weights_only=True)["state_dict"]
        theirs = {self._renamed(k[len("model.") :]): v for k, v in state.items() if k.startswith("model.")}
        ours = model.state_dict()
        parts = self.parts

        def chosen(key: str) -> bool:  # a tensor of a part model.init_parts takes
            return parts is None or key.split(".")[0] in parts

        if parts is not None:
            missing = sorted(k for k in ours if chosen(k) and k not in theirs)
            if missing:
                raise ValueError(
                    f"model.init_from={self.path}: model.init_parts={list(parts)} takes these parts from the "
                    f"checkpoint, but it lacks {len(missing)} of their tensors, e.g. {missing[0]}; give a run that "
                    f"trained them, or leave the part out of model.init_parts (it then starts from its initialisation)"
                )
        loaded = {k: v for k, v in theirs.items() if k in ours and chosen(k)}
        wrong = [
            f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in loaded.items() if v.shape != ours[k].shape
        ]
        if wrong:
            raise ValueError(
                f"model.init_from={self.path}: {len(wrong)} tensors differ in shape from this model's, e.g. "
                f"{wrong[0]}; the stages must share their sizes (model.size and the sizes table)"
            )
        model.load_state_dict(loaded, strict=False)
        fresh = sorted(k for k in ours if k not in loaded)
        excluded = sorted(k for k in theirs if k in ours and not chosen(k))
        dropped = sorted(k for k in theirs if k not in ours)
        log.info(
            "model.init_from=%s (model.init_parts=%s): loaded %d tensors: %s; initialised fresh: %s; "
            "left out by model.init_parts: %s; not in this model: %s",
            self.path,
            "all" if self.parts is None else list(self.parts),
            len(loaded),
            _parts(loaded),
            _parts(fresh),
            _parts(excluded),
            _parts(dropped),
        )
        return {
            "checkpoint": str(self.path),
            "parts": None if self.parts is None else list(self.parts),
            "loaded": sorted(loaded),
            "fresh": fresh,
            "excluded": excluded,
            "dropped": dropped,
        }

    def load_objectives(self, objectives: dict) -> dict[str, list[str]]:
        """Load into each objective the tensors it `inherits` from the checkpoint; every tensor under the
        declared prefixes must be there at its shape. Returns the loaded names per objective."""
        wanted = {name: o.inherits() for name, o in objectives.items() if o.inherits()}
        if not wanted:
            return {}
        state = torch.load(self.path, map_location="cpu", weights_only=True)["state_dict"]
        loaded: dict[str, list[str]] = {}
        for name, inherits in wanted.items():
            objective = objectives[name]
            ours = objective.state_dict()
            found: dict[str, torch.Tensor] = {}
            for own, theirs in inherits.items():
                needed = [k for k in ours if k.startswith(own)]
                missing = [k for k in needed if theirs + k[len(own) :] not in state]
                if missing:
                    raise ValueError(
                        f"objective '{name}' takes its {own.rstrip('.')} from the run of model.init_from={self.path}, "
                        f"but that checkpoint has no {theirs + missing[0][len(own) :]} ({len(missing)} of "
                        f"{len(needed)} tensors missing): give a run that trained it (the stage-1 experiment of this "
                        f"recipe, see its header comment)"
                    )
                for k in needed:
                    tensor = state[theirs + k[len(own) :]]
                    differs = not tensor.is_floating_point() and not torch.equal(tensor, ours[k])  # a setting's flag
                    if tensor.shape != ours[k].shape or differs:
                        raise ValueError(
                            f"objective '{name}': {k} is {_described(ours[k])} here but {_described(tensor)} in "
                            f"model.init_from={self.path}: its settings must be the earlier run's (the same sizes)"
                        )
                    found[k] = tensor
            objective.load_state_dict(found, strict=False)
            loaded[name] = sorted(found)
            log.info("model.init_from=%s: objective %s loaded %d tensors (%s)", self.path, name, len(found), inherits)
        return loaded
