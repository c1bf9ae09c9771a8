"""torch's CUDA caching allocator, replayed on a trace's allocations.

A CPU trace sees every tensor storage made and freed, in order, but not the blocks and
segments a GPU run would hold for them. Replaying that stream through the allocator's
rules gives the reserved tier (``torch.cuda.max_memory_reserved``) a traced step implies,
fragmentation included. The rules, from c10/cuda/CUDACachingAllocator.cpp with its default
configuration (no ``expandable_segments``, no ``max_split_size_mb``, no garbage collection,
one stream):

- a request is rounded up to a multiple of 512 B (``round_size``);
- requests up to 1 MiB come from the small pool, larger ones from the large pool;
- a free block is taken best-fit: the smallest cached block of the pool at least as large
  (ties by address, ``get_free_block``);
- otherwise a new segment is reserved: 2 MiB for a small request, 20 MiB for one under
  10 MiB, else the request rounded up to 2 MiB (``get_allocation_size``);
- a block larger than the request is split when what remains is at least 512 B (small
  pool) or more than 1 MiB (large pool) (``should_split``);
- a freed block merges with free neighbours of its own segment; segments are never merged
  with each other and never given back, except that a cudaMalloc which fails first frees
  every wholly free segment and retries (``release_cached_blocks``). ``peak_reserved`` is
  what ``max_memory_reserved`` shows on a card with room; ``peak_needed`` is the least a
  card must offer for the same stream, counting only segments that hold a live block when a
  new one is needed.

Checked against the allocator at torch 2.1 (what ms-swift's and Qwen's 2023-24 benchmarks ran)
and today (pytorch/pytorch @001074d2: kMinBlockSize, kSmallSize, kSmallBuffer, kMinLargeAlloc,
kRoundLarge, kLargeBuffer and the header comment's rules): the same constants and rules;
``expandable_segments``, ``max_split_size_mb``, ``roundup_power2_divisions`` and
``garbage_collection_threshold`` change them and are off by default. Replayed over
micro-batches of different lengths in one process, the stream grows the cache at each batch
longer than every earlier one (its loss chain fits no cached block) and at no other
(benchmarks/allocator_replay.py --lengths; memory/lengths.py).

Not modelled: what loading the checkpoint leaves cached, and kernels' own workspaces.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
MIN_LARGE_ALLOC = 10 << 20
LARGE_BUFFER = 20 << 20
ROUND_LARGE = 2 << 20


def round_size(nbytes: int) -> int:
    """A request rounded up to the allocator's 512-byte grain."""
    return MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    """The segment reserved when no cached block fits a (rounded) request."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class Block:
    addr: int
    size: int
    small: bool
    free: bool = True
    prev: Block | None = None
    next: Block | None = None


@dataclass
class CachingAllocator:
    """Blocks and segments for a stream of ``malloc(key, nbytes)`` / ``free(key)``."""

    pools: dict[bool, list[tuple[int, int]]] = field(default_factory=lambda: {True: [], False: []})
    blocks: dict[int, Block] = field(default_factory=dict)
    live: dict[int, Block] = field(default_factory=dict)
    next_addr: int = 0
    allocated: int = 0
    reserved: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    #: the least a card must offer: torch frees every wholly free segment and retries
    #: before it reports out-of-memory, so only segments holding a live block count
    peak_needed: int = 0
    whole_free: int = 0  # bytes in wholly free segments (what release_cached_blocks frees)

    def malloc(self, key: int, nbytes: int) -> None:
        if nbytes <= 0:  # torch hands out no block for an empty storage
            return
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self.pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            _, addr = pool.pop(i)
            block = self.blocks[addr]
            if block.prev is None and block.next is None:
                self.whole_free -= block.size
        else:
            seg = segment_size(size)
            block = Block(self.next_addr, seg, small)
            self.blocks[block.addr] = block
            self.next_addr += seg + ROUND_LARGE  # segments are never adjacent
            self.reserved += seg
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        rest = block.size - size
        if (rest >= MIN_BLOCK) if small else (rest > SMALL_SIZE):
            tail = Block(block.addr + size, rest, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            self.blocks[tail.addr] = tail
            bisect.insort(pool, (rest, tail.addr))
        block.free = False
        self.live[key] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_needed = max(self.peak_needed, self.reserved - self.whole_free)

    def free(self, key: int) -> None:
        block = self.live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        block.free = True
        pool = self.pools[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is None or not neighbour.free:
                continue
            pool.remove((neighbour.size, neighbour.addr))
            lo, hi = (neighbour, block) if neighbour is block.prev else (block, neighbour)
            del self.blocks[hi.addr]
            lo.size += hi.size
            lo.next = hi.next
            if hi.next is not None:
                hi.next.prev = lo
            block = lo
        if block.prev is None and block.next is None:
            self.whole_free += block.size
        bisect.insort(pool, (block.size, block.addr))


def replay(events: list[tuple[int, int]]) -> CachingAllocator:
    """Run a trace's events, ``(key, nbytes)`` for a new storage and ``(key, -1)`` for a
    freed one, through the allocator; its peaks are the replay's result."""
    alloc = CachingAllocator()
    for key, nbytes in events:
        if nbytes < 0:
            alloc.free(key)
        else:
            alloc.malloc(key, nbytes)
    return alloc
