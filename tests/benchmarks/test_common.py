"""benchmarks.common's compile counter, without a GPU."""
from benchmarks.common import new_variants, triton_variants


def test_every_engine_kernel_is_counted():
    counts = triton_variants()
    for kernel in ("decode_attention._decode_kernel", "paged_attention._varlen_kernel", "gemv._skinny_linear_kernel",
                   "norm._rms_norm_kernel", "sampling._gumbel_argmax_kernel"):
        assert kernel in counts
    assert all(isinstance(n, int) and n >= 0 for n in counts.values())


def test_new_variants_are_the_kernels_whose_count_grew():
    before = {"a": 1, "b": 2}
    assert new_variants(before, {"a": 1, "b": 4, "c": 1}) == {"b": 2, "c": 1}
    assert new_variants(before, before) == {}
