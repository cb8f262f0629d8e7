"""The compiled augmentation (issue 14, item 2): no graph breaks under fullgraph=True, the same
views as torchvision per sample, output in the training dtype and the input's memory format."""

import itertools

import pytest
import torch

from pipelines import augment as A

from test_augment import _images, _torchvision_view

VIEW = A.ViewSpec(jitter_p=0.7, gray_p=0.3, blur_p=0.5, solarize_p=0.5)


def _batch(n=32, seed=3):
    x = (_images(n, h=24, w=28, seed=seed) * 255).round().to(torch.uint8)
    return x.contiguous(memory_format=torch.channels_last), A.sample_params(VIEW, n, torch.Generator().manual_seed(4))


@pytest.mark.parametrize("template", [A.EAGER_SLOTS, A.COMPILED_SLOTS], ids=["eager", "compiled"])
def test_every_jitter_order_embeds_in_the_slot_templates(template):
    orders = torch.tensor(list(itertools.permutations(range(4))))
    slots = A.slot_ops(orders, template)
    for order, row in zip(orders.tolist(), slots.tolist()):
        assert [op for op in row if op != A.IDENTITY] == order
        assert all(op == A.IDENTITY or op in template[k] for k, op in enumerate(row))


def test_apply_view_traces_with_no_graph_breaks():
    x, p = _batch()
    explained = torch._dynamo.explain(A.apply_view)(x, VIEW, p, A.IMAGENET_MEAN, A.IMAGENET_STD, torch.float32)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def _per_sample_reference(x, p):
    return torch.stack([_torchvision_view(x[i], VIEW, p, i, A.IMAGENET_MEAN, A.IMAGENET_STD)
                        for i in range(len(x))])


def test_the_compiled_graph_matches_torchvision_per_sample():
    # aot_eager runs the traced graph (the planes, the fused-blur formulation) without codegen
    x, p = _batch()
    torch._dynamo.reset()
    compiled = torch.compile(A.apply_view, fullgraph=True, backend="aot_eager")
    out = compiled(x, VIEW, p)
    assert (out - _per_sample_reference(x, p)).abs().max() <= 1e-4  # as the eager test
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    untouched = ~(p.jitter | p.gray | p.blur | p.solarize)
    assert untouched.any()


def test_bf16_output_is_the_fp32_views_rounded_once():
    x, p = _batch()
    fp32 = A.apply_view(x, VIEW, p)
    bf16 = A.apply_view(x.contiguous(), VIEW, p, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.is_contiguous()
    # computed in fp32, rounded once at the end: bf16 keeps 8 bits (|x| < 2.7 after normalize)
    assert (bf16.float() - fp32).abs().max() <= 2.7 * 2 ** -8


@pytest.mark.slow  # inductor's C++ compile of the view: ~1 min on 2 shared cores
def test_inductor_compiled_view_matches_torchvision_per_sample():
    x, p = _batch()
    out = A.compiled_apply_view(x, VIEW, p)
    assert (out - _per_sample_reference(x, p)).abs().max() <= 1e-4
