"""Splitting CPU stacks over threads: same slices whatever the thread count, order kept, threads restored."""

import pytest
import torch

from defense_cli.defenses.cpu_threads import map_in_cache_sized_chunks, map_over_threads


def _with_threads(count, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_chunks_are_the_same_slices_on_any_thread_count_and_come_back_in_order():
    stack = torch.arange(23.0)
    seen = {1: [], 2: []}
    for threads in (1, 2):
        def record(piece, threads=threads):
            seen[threads].append(piece.tolist())
            return piece * 2
        out = _with_threads(threads, lambda: map_in_cache_sized_chunks(record, stack, 5))
        assert torch.equal(out, stack * 2)
    assert sorted(seen[1]) == sorted(seen[2]) and [len(p) for p in seen[1]] == [5, 5, 5, 5, 3]


def test_a_short_stack_is_one_call_with_the_usual_threads():
    counts = []
    _with_threads(2, lambda: map_in_cache_sized_chunks(lambda p: counts.append(torch.get_num_threads()) or p,
                                                       torch.zeros(4), 5))
    assert counts == [2]


def test_workers_run_single_threaded_and_the_count_is_restored_after_an_error():
    counts = []

    def failing(piece):
        counts.append(torch.get_num_threads())
        raise RuntimeError("boom")

    def run():
        with pytest.raises(RuntimeError, match="boom"):
            map_in_cache_sized_chunks(failing, torch.zeros(12), 4)
        return torch.get_num_threads()

    assert _with_threads(2, run) == 2
    assert counts and set(counts) == {1}
    parts = _with_threads(2, lambda: map_over_threads(lambda p: len(p), torch.zeros(10), min_items=2))
    assert parts == [5, 5]
