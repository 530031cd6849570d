"""Tasks on Python threads, colour by colour: the scheduler of the NLM kernels (:mod:`.nonlocal_means_numba`).

A "colour" is a set of tasks (plane indices) whose writes never overlap, so they may run at the same
time; colours run one after the other. The kernels release the GIL, so plain Python threads run them in
parallel without a numba thread pool (nothing spins between calls).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np


def run_coloured(kernel, head, colours, args, threads: int, progress, planes_per_call: int):
    """Run ``kernel(*head, planes, *args)`` over every colour (array of task indices whose writes never
    overlap), colour after colour; within a colour, groups of at most ``planes_per_call`` tasks run on
    ``threads`` Python threads (the kernels release the GIL). ``progress(fraction)`` after each group, in
    order; an exception from it cancels the groups not yet started. The result does not depend on ``threads``:
    every voxel receives the same sums in the same order."""
    threads = max(1, int(threads))
    work = []
    for colour in colours:
        size = max(1, min(planes_per_call, -(-len(colour) // threads)))
        work.append([np.ascontiguousarray(colour[i : i + size]) for i in range(0, len(colour), size)])
    total, done = sum(len(groups) for groups in work), 0

    def report():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / total)

    if threads == 1:
        for groups in work:
            for group in groups:
                kernel(*head, group, *args)
                report()
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            for groups in work:
                futures = [pool.submit(kernel, *head, group, *args) for group in groups]
                for future in futures:
                    future.result()
                    report()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
