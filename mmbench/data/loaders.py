"""The train loader's order and resumption: a shuffle that depends on (seed, epoch) only
(`EpochShuffleSampler`) and a DataLoader that continues an epoch where a checkpoint stopped it
(`ResumableLoader`)."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmbench.checkpoints import CheckpointError


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random permutation per epoch that depends on (seed, epoch) only; `set_epoch` picks the epoch. With
    `keys`, it yields (epoch, index) pairs (for `mmbench.data.augment.AugmentedPairs`), else indices."""

    def __init__(self, n: int, seed: int, keys: bool = False):
        self.n, self.seed, self.epoch, self.keys = n, seed, 0, keys

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        (state,) = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)
        generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        order = torch.randperm(self.n, generator=generator).tolist()
        return iter([(self.epoch, i) for i in order] if self.keys else order)


class ResumableLoader(DataLoader):
    """The train DataLoader, resumable within an epoch through Lightning's stateful-loader protocol:
    Lightning saves `state_dict()` in every checkpoint; resuming within an epoch, `load_state_dict` is
    called before the first batch is drawn (by `mmbench.callbacks.MidEpochResume`). Lightning itself
    does not fast-forward a map-style loader.

    The state is the number of batches yielded in the current epoch (Lightning's own loader does not
    prefetch a sized loader, so that is the number trained on when a checkpoint is written). After
    `load_state_dict` the next iteration drops that many batches of indices from the batch sampler,
    so no data is read for them and the epoch goes on with the batches an uninterrupted run would see:
    the order is a function of (seed, epoch) (EpochShuffleSampler), and loading an example is
    deterministic, so this holds with worker processes too. A checkpoint from other data settings
    (batch size, batches per epoch, epoch) is refused.
    """

    _position = 0  # batches yielded in the current epoch
    _skip = 0  # batches the next iteration leaves out (set by load_state_dict)
    _skip_epoch = 0  # the epoch they belong to

    def __iter__(self):
        # a generator: nothing below runs before the first batch is drawn, when Lightning has set the
        # sampler's epoch and the resume has set _skip (a DataLoader's worker processes would otherwise
        # start drawing indices as soon as `iter()` is called)
        epoch = int(getattr(self.sampler, "epoch", 0))
        if self._skip and epoch != self._skip_epoch:
            raise CheckpointError(
                f"the checkpoint stopped within epoch {self._skip_epoch}, but training resumed "
                f"at epoch {epoch}; delete the run's checkpoints/ to start it afresh"
            )
        self._position = self._skip
        batches = super().__iter__()  # draws its indices from _index_sampler, which leaves out _skip batches
        self._skip = 0
        for batch in batches:
            self._position += 1
            yield batch

    @property
    def _index_sampler(self):
        return _SkipBatches(super()._index_sampler, self)

    def state_dict(self) -> dict:
        return {
            "batches": self._position,
            "epoch": int(getattr(self.sampler, "epoch", 0)),
            "batch_size": self.batch_size,
            "num_batches": len(self),
        }

    def load_state_dict(self, state: dict) -> None:
        saved, here = (state["batch_size"], state["num_batches"]), (self.batch_size, len(self))
        if saved != here:
            raise CheckpointError(
                f"the checkpoint stopped within an epoch of other data settings (batch size, batches per epoch: "
                f"{saved}; this run: {here}), so this run cannot continue that epoch. Rerun with the settings it "
                "was written with, or delete the run's checkpoints/ to start it afresh"
            )
        self._skip, self._skip_epoch = int(state["batches"]), int(state["epoch"])


class _SkipBatches:
    """The loader's batch sampler, leaving out the loader's first `_skip` batches when iterated (torch's
    worker iterator calls `iter()` on it twice while it is built, so the loader resets `_skip` after)."""

    def __init__(self, batches, loader: ResumableLoader):
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)  # a whole epoch: Lightning counts the resumed epoch's batches itself

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.loader._skip, None)
