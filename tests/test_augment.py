"""pipelines/augment/: every entry of the table of ops (table.OPS), on both paths (eager NCHW and
the compiled path's channel planes), and each batched op against torchvision.transforms.v2.functional,
sample by sample; the sampler's frequencies against the recipe; seeding; the recipe as data.

Tolerances (max abs difference on [0, 1] floats; the issue allows 2/255 ~ 7.8e-3): float rounding
only, since the ops mirror torchvision's float formulas. Hue is a closed-form HSV -> RGB instead of
torchvision's six-sector table, blur is separable instead of 2-D: still rounding only.
"""

import dataclasses
import itertools
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipelines import augment as A
from pipelines.augment import view as V

TOL = {"brightness": 1e-6, "contrast": 1e-6, "saturation": 1e-6, "hue": 1e-5, "grayscale": 1e-6,
       "blur": 1e-5, "solarize": 0.0, "normalize": 1e-6}
N = 12


def _images(n=N, h=24, w=28, seed=0):
    """Random images with the hard cases: flat gray, pure black/white, channel ties (uint8 values)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[n // 2:] = torch.randint(0, 256, (n - n // 2, 3, h, w), generator=g) / 255  # r == g ties happen
    x[0] = 0.5
    x[1, :, :, : w // 2] = 0.0
    x[1, :, :, w // 2:] = 1.0
    x[2, 1] = x[2, 0]                                                          # max shared by r and g
    return x


def _values(lo, hi, edges, n=N, seed=1):
    v = lo + (hi - lo) * torch.rand(n, generator=torch.Generator().manual_seed(seed))
    v[: len(edges)] = torch.tensor(edges)
    return v


# op name -> (ours, torchvision's on one image with a float, per-sample values)
OPS = {
    "brightness": (A.adjust_brightness, TF.adjust_brightness, _values(0, 2, [0.0, 1.0, 2.0])),
    "contrast": (A.adjust_contrast, TF.adjust_contrast, _values(0, 2, [0.0, 1.0, 2.0])),
    "saturation": (A.adjust_saturation, TF.adjust_saturation, _values(0, 2, [0.0, 1.0, 2.0])),
    "hue": (A.adjust_hue, TF.adjust_hue, _values(-0.5, 0.5, [0.5, -0.5, 0.0, 0.5, -0.5, 1e-3])),
    "blur": (lambda x, s: A.gaussian_blur(x, s, 17), lambda im, s: TF.gaussian_blur(im, 17, s),
             _values(0.1, 2.0, [0.1, 2.0, 2.0, 0.1])),
    "solarize": (A.solarize, TF.solarize, _values(0, 1, [0.0, 1.0, 0.5, 128 / 255])),
}


@pytest.mark.parametrize("name", OPS)
def test_op_matches_torchvision_per_sample(name):
    ours, theirs, values = OPS[name]
    x = _images()
    expected = torch.stack([theirs(x[i], float(values[i])) for i in range(N)])
    assert (ours(x, values) - expected).abs().max() <= TOL[name]
    # One number for the whole batch works too.
    assert (ours(x, float(values[3])) - torch.stack([theirs(im, float(values[3])) for im in x])
            ).abs().max() <= TOL[name]


def test_grayscale_and_normalize_match_torchvision():
    x = _images()
    assert (A.rgb_to_grayscale(x, 3) - TF.rgb_to_grayscale(x, 3)).abs().max() <= TOL["grayscale"]
    assert A.rgb_to_grayscale(x).shape == (N, 1, 24, 28)
    mean, std = A.IMAGENET_MEAN, A.IMAGENET_STD
    expected = TF.normalize(x, list(mean), list(std))
    assert (A.normalize(x, mean, std) - expected).abs().max() <= TOL["normalize"]


# ---- the table of ops: every entry, both paths, against its torchvision reference ----------------

def _only(op):
    """A view in which `op` alone may apply, to about half the samples."""
    return dataclasses.replace(A.ViewSpec(), **{o.probability: 0.5 if o is op else 0.0 for o in A.OPS})


def _planes(op, x, view, p):
    return torch.cat(op.apply_planes(list(x.split(1, dim=1)), view, p), dim=1)


@pytest.mark.parametrize("path", ["eager", "planes"])
@pytest.mark.parametrize("op", A.OPS, ids=lambda op: op.name)
def test_every_op_of_the_table_matches_its_torchvision_reference_per_sample(op, path):
    """One generic check per entry: its sampled parameters, applied batched (eager NCHW, or on the
    compiled path's channel planes, run eagerly here), against torchvision's functional ops on each
    image (its `reference`); samples its mask leaves out come back unchanged."""
    view, n = _only(op), 16
    x = _images(n, seed=7)
    p = A.sample_params(view, n, torch.Generator().manual_seed(8))
    mask = getattr(p, op.name)
    assert mask.any() and not mask.all()
    out = op.apply(x.clone(), view, p) if path == "eager" else _planes(op, x.clone(), view, p)
    expected = torch.stack([op.reference(x[i], view, p, i) if mask[i] else x[i] for i in range(n)])
    assert (out - expected).abs().max() <= 1e-5  # float rounding only (hue, blur: ~1e-6)
    assert torch.equal(out[~mask], x[~mask])  # exactly (the blur's identity is a one-hot kernel)


def test_the_table_is_the_official_order_and_every_op_has_its_parameters():
    assert [op.name for op in A.OPS] == ["jitter", "gray", "blur", "solarize"]
    p = A.sample_params(A.ViewSpec(), 4, torch.Generator().manual_seed(0))
    names = [f.name for f in dataclasses.fields(p)]
    assert names == [name for op in A.OPS for name in (op.name, *op.params)]
    assert all(getattr(p, name).shape[0] == 4 for name in names)


def _torchvision_view(img_u8, view, p, i, mean, std):
    """The reference: torchvision v2 functional on one image, with sample i's drawn params: the
    table's references, in its order, for the ops applied to sample i."""
    x = TF.to_dtype(img_u8, torch.float32, scale=True)
    for op in A.OPS:
        if getattr(view, op.probability) > 0 and getattr(p, op.name)[i]:
            x = op.reference(x, view, p, i)
    return TF.normalize(x, list(mean), list(std))


@pytest.mark.parametrize("chunk_bytes", [V.CPU_CHUNK_BYTES, 20000], ids=["one-chunk", "chunked"])
def test_view_matches_torchvision_per_sample(chunk_bytes, monkeypatch):
    """Jitter in each sample's order, gray, blur, solarize, normalize; masks mixed; channels_last."""
    monkeypatch.setattr(V, "CPU_CHUNK_BYTES", chunk_bytes)  # 20000 bytes: 2 images a chunk
    view = A.ViewSpec(jitter_p=0.7, gray_p=0.3, blur_p=0.5, solarize_p=0.5)
    n = 32
    x = (_images(n, seed=3) * 255).round().to(torch.uint8).contiguous(memory_format=torch.channels_last)
    p = A.sample_params(view, n, torch.Generator().manual_seed(4))
    out = A.apply_view(x, view, p)
    expected = torch.stack([_torchvision_view(x[i], view, p, i, A.IMAGENET_MEAN, A.IMAGENET_STD)
                            for i in range(n)])
    # Normalize divides by std ~0.22: the [0, 1] tolerances grow by ~4.5x.
    assert (out - expected).abs().max() <= 1e-4
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    # Samples no op touched come out exactly normalized (identity blur kernel, unreachable threshold).
    untouched = ~(p.jitter | p.gray | p.blur | p.solarize)
    assert untouched.any()
    plain = A.normalize(A.to_float(x), A.IMAGENET_MEAN, A.IMAGENET_STD)
    assert torch.equal(out[untouched], plain[untouched])


@pytest.mark.parametrize("view", [A.AugSpec().view1, A.AugSpec().view2], ids=["view1", "view2"])
def test_sampler_frequencies_and_ranges(view):
    n = 20000
    p = A.sample_params(view, n, torch.Generator().manual_seed(5))
    for mask, prob in [(p.jitter, view.jitter_p), (p.gray, view.gray_p), (p.blur, view.blur_p),
                       (p.solarize, view.solarize_p)]:
        bound = 4.5 * math.sqrt(n * prob * (1 - prob))  # binomial, ~1e-5 false alarm each
        assert abs(mask.sum().item() - n * prob) <= bound
    # Each op lands in each position of the jitter order with probability 1/4.
    counts = torch.stack([(p.order == op).sum(0) for op in range(4)])
    assert ((counts - n / 4).abs() <= 4.5 * math.sqrt(n * 0.25 * 0.75)).all()
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()
    for values, lo, hi in [(p.brightness, 1 - view.brightness, 1 + view.brightness),
                           (p.contrast, 1 - view.contrast, 1 + view.contrast),
                           (p.saturation, 1 - view.saturation, 1 + view.saturation),
                           (p.hue, -view.hue, view.hue), (p.sigma, *view.blur_sigma)]:
        assert lo <= values.min() and values.max() <= hi
        assert abs(values.mean().item() - (lo + hi) / 2) <= 0.01 * (hi - lo)


def test_seed_reproduces_and_views_differ():
    spec = A.AugSpec()
    x = (_images(8, seed=6) * 255).to(torch.uint8)
    a1, a2 = A.augment_pair(x, x, spec, torch.Generator().manual_seed(7))
    b1, b2 = A.augment_pair(x, x, spec, torch.Generator().manual_seed(7))
    c1, _ = A.augment_pair(x, x, spec, torch.Generator().manual_seed(8))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, c1)
    assert (a1 - a2).flatten(1).abs().amax(1).min() > 0.1  # every pair's two views differ
    assert a1.shape == x.shape and torch.isfinite(a1).all()


def test_recipe_defaults_and_ranges():
    spec = A.AugSpec()
    v1, v2 = spec.view1, spec.view2
    assert (v1.crop_scale, v1.flip_p, v1.jitter_p, v1.gray_p) == ((0.08, 1.0), 0.5, 0.8, 0.2)
    assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (v1.blur_p, v1.blur_sigma, v1.solarize_p) == (1.0, (0.1, 2.0), 0.0)
    assert dataclasses.replace(v1, blur_p=0.1, solarize_p=0.2) == v2
    assert (spec.size, spec.interpolation) == (224, "bicubic")
    assert (spec.mean, spec.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert A.blur_kernel_size(2.0) == 17

    with pytest.raises(ValueError, match="gray_p"):
        A.ViewSpec(gray_p=1.5)
    with pytest.raises(ValueError, match="hue"):
        A.ViewSpec(hue=0.6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_views_on_cuda_as_on_cpu():
    spec = A.AugSpec()
    x = (_images(16, h=64, w=64, seed=9) * 255).to(torch.uint8)
    cpu = A.augment_pair(x, x, spec, torch.Generator().manual_seed(10))
    cuda = A.augment_pair(x.cuda(), x.cuda(), spec, torch.Generator().manual_seed(10))
    for a, b in zip(cpu, cuda):
        assert (a - b.cpu()).abs().max() <= 1e-4


@pytest.mark.slow
def test_apply_view_compiles():
    view = A.AugSpec().view2
    x = (_images(8, seed=11) * 255).to(torch.uint8)
    p = A.sample_params(view, 8, torch.Generator().manual_seed(12))
    compiled = torch.compile(A.apply_view, fullgraph=True)
    assert (compiled(x, view, p) - A.apply_view(x, view, p)).abs().max() <= 1e-4


# ---- the compiled view (issue 14): no graph breaks, torchvision parity, training dtype ----

COMPILE_VIEW = A.ViewSpec(jitter_p=0.7, gray_p=0.3, blur_p=0.5, solarize_p=0.5)


def _batch(n=32, seed=3):
    x = (_images(n, h=24, w=28, seed=seed) * 255).round().to(torch.uint8)
    params = A.sample_params(COMPILE_VIEW, n, torch.Generator().manual_seed(4))
    return x.contiguous(memory_format=torch.channels_last), params


@pytest.mark.parametrize("template", [A.EAGER_SLOTS, A.COMPILED_SLOTS], ids=["eager", "compiled"])
def test_every_jitter_order_embeds_in_the_slot_templates(template):
    orders = torch.tensor(list(itertools.permutations(range(4))))
    slots = A.slot_ops(orders, template)
    for order, row in zip(orders.tolist(), slots.tolist()):
        assert [op for op in row if op != A.IDENTITY] == order
        assert all(op == A.IDENTITY or op in template[k] for k, op in enumerate(row))


def test_apply_view_traces_with_no_graph_breaks():
    x, p = _batch()
    explained = torch._dynamo.explain(A.apply_view)(x, COMPILE_VIEW, p, A.IMAGENET_MEAN, A.IMAGENET_STD,
                                                    torch.float32)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def _per_sample_reference(x, p):
    return torch.stack([_torchvision_view(x[i], COMPILE_VIEW, p, i, A.IMAGENET_MEAN, A.IMAGENET_STD)
                        for i in range(len(x))])


def test_the_compiled_graph_matches_torchvision_per_sample():
    # aot_eager runs the traced graph (the planes, the fused-blur formulation) without codegen
    x, p = _batch()
    torch._dynamo.reset()
    compiled = torch.compile(A.apply_view, fullgraph=True, backend="aot_eager")
    out = compiled(x, COMPILE_VIEW, p)
    assert (out - _per_sample_reference(x, p)).abs().max() <= 1e-4  # as the eager test
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    untouched = ~(p.jitter | p.gray | p.blur | p.solarize)
    assert untouched.any()


def test_bf16_output_is_the_fp32_views_rounded_once():
    x, p = _batch()
    fp32 = A.apply_view(x, COMPILE_VIEW, p)
    bf16 = A.apply_view(x.contiguous(), COMPILE_VIEW, p, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.is_contiguous()
    # computed in fp32, rounded once at the end: bf16 keeps 8 bits (|x| < 2.7 after normalize)
    assert (bf16.float() - fp32).abs().max() <= 2.7 * 2 ** -8


@pytest.mark.slow  # inductor's C++ compile of the view: ~1 min on 2 shared cores
def test_inductor_compiled_view_matches_torchvision_per_sample():
    x, p = _batch()
    out = A.compiled_apply_view(x, COMPILE_VIEW, p)
    assert (out - _per_sample_reference(x, p)).abs().max() <= 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_bf16_augmentation_on_cuda_equals_cpu_on_the_same_seed():
    spec = A.AugSpec()
    x = (_images(16, h=64, w=64, seed=9) * 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    cpu = A.augment_pair(x, x, spec, torch.Generator().manual_seed(10))
    cuda = A.augment_pair(x.cuda(), x.cuda(), spec, torch.Generator().manual_seed(10),
                          dtype=torch.bfloat16, compiled=True)
    for a, b in zip(cpu, cuda):
        assert b.dtype == torch.bfloat16 and b.is_contiguous(memory_format=torch.channels_last)
        assert (a - b.float().cpu()).abs().max() <= 2.7 * 2 ** -8 + 1e-4  # one bf16 rounding
