"""pipelines.augment.view.compiled_apply_view on CPU: the batch goes through the graph in equal NCHW
chunks; the views, dtype and memory format are those of the whole batch at once."""

import pytest
import torch

from pipelines import augment as A
from pipelines.augment import view as V
from test_augment import COMPILE_VIEW, _batch, _per_sample_reference


@pytest.mark.parametrize("n, at_most, expected", [(32, 8, 8), (32, 10, 8), (30, 8, 6), (31, 8, 1), (4, 8, 4)])
def test_chunks_are_the_largest_divisor_so_one_graph_per_batch_shape(n, at_most, expected):
    assert V._largest_divisor(n, at_most) == expected


@pytest.mark.slow  # inductor's C++ compile of the view: ~1 min on 2 shared cores
def test_chunked_compiled_views_match_torchvision_in_both_layouts(monkeypatch):
    x, p = _batch()  # 32 channels-last crops
    calls = []
    compiled = V._compiled_apply_view or torch.compile(A.apply_view, fullgraph=True, dynamic=False)
    monkeypatch.setattr(V, "_compiled_apply_view", lambda xc, *a: calls.append(xc.shape) or compiled(xc, *a))
    monkeypatch.setattr(V, "COMPILED_CPU_CHUNK_BYTES", 8 * 4 * x.shape[1:].numel())  # 8 images
    reference = _per_sample_reference(x, p)
    for crops in (x, x.contiguous()):
        out = A.compiled_apply_view(crops, COMPILE_VIEW, p)
        assert (out - reference).abs().max() <= 1e-4
        assert out.is_contiguous(memory_format=torch.channels_last) == (crops is x)
        assert out.is_contiguous() == (crops is not x)
    bf16 = A.compiled_apply_view(x, COMPILE_VIEW, p, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.is_contiguous(memory_format=torch.channels_last)
    assert (bf16.float() - reference).abs().max() <= 2.7 * 2 ** -8 + 1e-4  # one bf16 rounding
    assert set(calls) == {torch.Size([8, 3, 24, 28])}
