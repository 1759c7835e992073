"""Training batches from memory-mapped token shards, in an order fixed by the seed and the position.

The train split is cut into non-overlapping windows of seq_len + 1 tokens (inputs are the first
seq_len tokens, targets the last seq_len). Windows are visited epoch by epoch, each epoch in a
permutation that depends only on (seed, epoch). A global sample counter says how far the run has got;
optimizer step s with a global batch of G windows reads samples [s * G, (s + 1) * G), and within a
micro-step each data-parallel rank reads its own disjoint slice. The counter is the loader's whole
state: it goes into every checkpoint, and a resumed run reads exactly the batches an uninterrupted
run would have read, also with a different number of ranks as long as the global batch is the same.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from train.errors import ShardDataError

log = logging.getLogger(__name__)

SHARDS_HINT = "run `crawlgpt shards --data DATA` (or `make shards`) to write the token shards"


def open_split(shards_dir: str | Path, split: str, verify_checksums: bool = True):
    """Open one split of the token shards, turning any reader error into a `ShardDataError`."""
    from formats.token_shards import TokenShardError, TokenShards  # numpy/pyarrow only

    try:
        return TokenShards(shards_dir, split=split, verify_checksums=verify_checksums)
    except TokenShardError as err:
        raise ShardDataError(f"cannot read the {split!r} token shards in {shards_dir}: {err}") from err
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        raise ShardDataError(
            f"cannot read the {split!r} token shards in {shards_dir}: {err}; {SHARDS_HINT}") from err


def read_window(shards, start: int, length: int) -> np.ndarray:
    """Tokens [start, start + length) of a split; a short or failing read is a `ShardDataError`."""
    try:
        tokens = shards.window(start, length)
    except (OSError, ValueError, IndexError) as err:
        raise ShardDataError(f"reading tokens [{start}, {start + length}) failed: {err}; {SHARDS_HINT}") from err
    if len(tokens) != length:
        raise ShardDataError(f"asked for {length} tokens at {start}, got {len(tokens)}; {SHARDS_HINT}")
    return tokens


class TokenBatchLoader:
    """Stateful loader of (inputs, targets) micro-batches, each (micro_batch_size, seq_len) int64."""

    def __init__(self, shards, seq_len: int, micro_batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, prefetch_batches: int = 0, pin_memory: bool = False):
        self.shards = shards
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.prefetch_batches = prefetch_batches
        self.pin_memory = pin_memory
        # The last token of a window is the first of the next, so windows step by seq_len.
        self.num_windows = (shards.num_tokens - 1) // seq_len
        samples_per_micro_step = micro_batch_size * world_size
        if self.num_windows < samples_per_micro_step:
            raise ShardDataError(
                f"the train split has {shards.num_tokens:,} tokens: {self.num_windows} windows of "
                f"{seq_len + 1} tokens, fewer than one micro-batch across all ranks "
                f"({micro_batch_size} x {world_size}); use a smaller --seq-len or --micro-batch, or more data")
        self.samples_consumed = 0  # global, all ranks together: the loader's whole state
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    # -- order ---------------------------------------------------------------------------------

    def window_index(self, sample: int) -> int:
        """Which window global sample number `sample` reads: epoch by epoch, in a seeded permutation."""
        epoch, position = divmod(sample, self.num_windows)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._perm_epoch = epoch
        return int(self._perm[position])

    def _make_batch(self, first_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's micro-batch of the micro-step whose first global sample is first_sample."""
        start = first_sample + self.rank * self.micro_batch_size
        rows = [read_window(self.shards, self.window_index(sample) * self.seq_len, self.seq_len + 1)
                for sample in range(start, start + self.micro_batch_size)]
        tokens = torch.from_numpy(np.stack(rows).astype(np.int64))  # (micro_batch, seq_len + 1)
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # each (micro_batch, seq_len)
        if self.pin_memory:
            # Page-locked memory lets the host-to-device copy run asynchronously (non_blocking=True).
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return inputs, targets

    # -- iteration -----------------------------------------------------------------------------

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch of this rank; advances the global sample counter."""
        if self.prefetch_batches > 0:
            if self._thread is None:
                self._start_prefetch()
            position, item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if position != self.samples_consumed:
                raise RuntimeError(f"prefetch thread at sample {position}, loader at {self.samples_consumed}")
            batch = item
        else:
            batch = self._make_batch(self.samples_consumed)
        self.samples_consumed += self.micro_batch_size * self.world_size
        return batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def _start_prefetch(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch_batches)
        self._thread = threading.Thread(target=self._prefetch, args=(self.samples_consumed,),
                                        name="token-prefetch", daemon=True)
        self._thread.start()

    def _prefetch(self, position: int) -> None:
        step = self.micro_batch_size * self.world_size
        while not self._stop.is_set():
            try:
                item: Any = self._make_batch(position)
            except BaseException as err:  # handed to the training thread, which raises it
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put((position, item), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            position += step

    def close(self) -> None:
        """Stop the prefetch thread (a later next_batch starts a new one)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        return {"samples_consumed": self.samples_consumed, "seed": self.seed, "seq_len": self.seq_len,
                "num_windows": self.num_windows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "seq_len", "num_windows"):
            if state[key] != getattr(self, key):
                raise ShardDataError(
                    f"the checkpoint's data loader had {key}={state[key]} but this run has "
                    f"{key}={getattr(self, key)}: the window order would differ from the interrupted run; "
                    f"resume with the same shards, --seq-len and --seed, or start a new --run")
        self.close()
        self.samples_consumed = int(state["samples_consumed"])


def eval_windows(shards, seq_len: int, batch_size: int, rank: int, world_size: int,
                 max_tokens: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validation micro-batches: consecutive windows from the start of the split, the same number of
    batches on every rank (ranks take turns), so collective operations stay in step."""
    num_windows = (shards.num_tokens - 1) // seq_len
    if max_tokens is not None:
        num_windows = min(num_windows, max(1, max_tokens // seq_len))
    batches_per_rank = num_windows // (batch_size * world_size)
    if batches_per_rank == 0:
        raise ShardDataError(
            f"the val split has {shards.num_tokens:,} tokens, too few for one batch of {batch_size} "
            f"windows of {seq_len + 1} tokens on each of {world_size} ranks; use a smaller --micro-batch "
            f"or --seq-len, or a larger validation split")
    for i in range(batches_per_rank):
        first = (i * world_size + rank) * batch_size
        rows = [read_window(shards, w * seq_len, seq_len + 1) for w in range(first, first + batch_size)]
        tokens = torch.from_numpy(np.stack(rows).astype(np.int64))  # (batch, seq_len + 1)
        yield tokens[:, :-1], tokens[:, 1:]  # each (batch, seq_len)
