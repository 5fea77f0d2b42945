"""Merging the partial results of several programs inside one launch.

The programs of a group each write a partial result, then call `last_to_arrive` on the group's
counter: it returns True in exactly one of them, the last, which may then read every partial
(with `.cg` loads: the other programs wrote them from other SMs, and only L2 is coherent) and
must call `reset` so the counter is zero for the next launch or CUDA-graph replay.
"""
import triton
import triton.language as tl


@triton.jit
def last_to_arrive(counter_ptr, group_size):
    tl.debug_barrier()  # every thread's partial is written before the release below
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == group_size - 1


@triton.jit
def reset(counter_ptr):
    tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")
