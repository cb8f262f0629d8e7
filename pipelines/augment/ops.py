"""The batched photometric ops: float NCHW images in [0, 1], per-sample parameters as (N,) tensors
(or one number for the whole batch), no loop over samples and no data-dependent shape, so a view
compiles with fullgraph=True. They mirror torchvision's float semantics: contrast blends with the
mean of the grayscale image, hue goes through HSV, blur pads by reflection, solarize inverts
x >= threshold. Max abs difference from torchvision.transforms.v2.functional per sample (the tests
assert the bound in brackets; the issue allows 2/255): brightness 0 [1e-6], contrast 1.2e-7 [1e-6],
saturation 1.8e-7 [1e-6], hue 1.4e-6 [1e-5], grayscale 1.2e-7 [1e-6], blur 1.0e-6 [1e-5],
solarize 0 [0], normalize 0 [1e-6]. Color jitter runs its four ops in each sample's own order
through slot templates (`color_jitter`, `jitter_slots`). Which op runs when: `pipelines.augment.table`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# torchvision's ColorJitter numbering (its fn_idx): a jitter order holds these.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def _per_sample(v, x: Tensor):
    """(N,) values -> (N, 1, 1, 1) on x's device; a number stays a number (no host-to-GPU copy)."""
    return v.to(x.device, x.dtype).reshape(-1, 1, 1, 1) if isinstance(v, Tensor) else float(v)


def _blend(x: Tensor, other: Tensor, f) -> Tensor:
    # torchvision's _blend, x * f + other * (1 - f) clamped to [0, 1], as one lerp.
    return torch.lerp(other, x, f).clamp_(0, 1)


def luma(r: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """ITU-R 601 luma with torchvision's weights."""
    return 0.2989 * r + 0.587 * g + 0.114 * b


def rgb_to_grayscale(x: Tensor, num_output_channels: int = 1) -> Tensor:
    """ITU-R 601 luma with torchvision's weights; 3 output channels repeat it (a view)."""
    gray = luma(*x.unbind(1)).unsqueeze(1)
    return gray.expand(-1, num_output_channels, -1, -1)


def adjust_brightness(x: Tensor, f) -> Tensor:
    return (x * _per_sample(f, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, f) -> Tensor:
    """Blend with the mean of each sample's grayscale image."""
    return _blend(x, rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), _per_sample(f, x))


def adjust_saturation(x: Tensor, f) -> Tensor:
    """Blend with each sample's grayscale image."""
    return _blend(x, rgb_to_grayscale(x), _per_sample(f, x))


def adjust_hue(x: Tensor, h) -> Tensor:
    """Rotate hue by h turns (h in [-0.5, 0.5]) through HSV, as torchvision does."""
    r, g, b = x.split(1, dim=1)
    maxc, minc = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)  # aminmax is slower
    hue6, sat, val = _rgb_to_hsv(r, g, b, maxc, minc)
    n = torch.arange(5, 0, -2, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return _hsv_to_rgb(hue6 + 6 * _per_sample(h, x), sat, val, n)


def hue_planes(r: Tensor, g: Tensor, b: Tensor, h: Tensor) -> list[Tensor]:
    """adjust_hue on separate channel planes, for compiled code (see `pipelines.augment.view`)."""
    hue6, sat, val = _rgb_to_hsv(r, g, b, torch.maximum(torch.maximum(r, g), b),
                                 torch.minimum(torch.minimum(r, g), b))
    shifted = hue6 + 6 * h
    return [_hsv_to_rgb(shifted, sat, val, n) for n in (5.0, 3.0, 1.0)]


def _hsv_to_rgb(hue6: Tensor, sat: Tensor, val: Tensor, n) -> Tensor:
    """HSV -> RGB in closed form (torchvision indexes a six-sector table): channel = v - v s w
    with w = clamp(min(k, 4 - k), 0, 1), k = (n + 6 hue) mod 6, n = 5, 3, 1 for r, g, b."""
    k = hue6 + n
    k = k - 6 * torch.floor(k / 6)  # mod 6; torch.remainder is several times slower on CPU
    w = torch.minimum(k, 4 - k).clamp_(0, 1)
    return torch.addcmul(val, val * sat, w, value=-1)


def _rgb_to_hsv(r: Tensor, g: Tensor, b: Tensor, maxc: Tensor, minc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue in sixths of a turn (in [-1, 5), unwrapped), saturation, value: each (N, 1, H, W).

    torchvision's formulas (after Pillow's). Flat pixels (max == min) get hue = sat = 0: their
    numerators are 0, and the denominators are clamped away from 0 (torchvision swaps in a 1).
    """
    delta = maxc - minc
    tiny = torch.finfo(r.dtype).tiny
    sat = delta / maxc.clamp(min=tiny)
    hue6 = torch.where(maxc == r, g - b, torch.where(maxc == g, torch.add(b - r, delta, alpha=2),
                                                     torch.add(r - g, delta, alpha=4)))
    return hue6 / delta.clamp(min=tiny), sat, maxc


def gaussian_blur(x: Tensor, sigma, kernel_size: int) -> Tensor:
    """Gaussian blur, per-sample sigma, a kernel_size x kernel_size kernel, reflect padding.

    kernel_size must be odd, with kernel_size // 2 smaller than the image sides (reflect padding).
    """
    n = x.shape[0]
    sigma = (sigma.to(x.device, x.dtype).expand(n) if isinstance(sigma, Tensor)
             else torch.full((n,), float(sigma), dtype=x.dtype, device=x.device))
    return separable_conv(x, gaussian_kernel1d(sigma, kernel_size))


def gaussian_kernel1d(sigma: Tensor, kernel_size: int) -> Tensor:
    """(N,) sigma -> (N, kernel_size) normalized kernels (torchvision's, from a softmax)."""
    t = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - (kernel_size - 1) / 2
    return torch.softmax(-0.5 * (t / sigma[:, None]) ** 2, dim=1)


def separable_conv(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve sample i with kernel[i] along W, then H; reflect padding keeps the size."""
    n, c, h, w = x.shape
    k = kernel.shape[1]
    # Fold the batch into channels so one grouped conv gives each sample its own kernel.
    weight = kernel.repeat_interleave(c, dim=0)
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


def separable_conv_by_shifts(x: Tensor, kernel: Tensor) -> Tensor:
    """`separable_conv` with symmetric kernels (gaussian, or the one-hot identity) as sums of
    shifted slices of explicitly padded copies: pointwise code with contiguous loads, which inductor
    vectorizes (the grouped conv is a slow opaque call here, and reflect padding left to indexing
    makes it fall back to scalar loads)."""
    _, _, h, w = x.shape
    r = kernel.shape[1] // 2
    taps = [bcast(kernel[:, j]) for j in range(r + 1)]
    y = _reflect_pad(x, r, dim=3)
    y = _symmetric_taps(taps, lambda j: y[..., j:j + w])
    y = _reflect_pad(y, r, dim=2)
    return _symmetric_taps(taps, lambda j: y[..., j:j + h, :])


def _symmetric_taps(taps: list[Tensor], shifted) -> Tensor:
    """sum_j t_j shifted(j) over j = 0..2r with t_j = t_{2r-j} (taps holds t_0..t_r): pairing the
    mirrored shifts halves the multiplies (the whole compiled view ran ~10% faster)."""
    r = len(taps) - 1
    return taps[r] * shifted(r) + sum(taps[j] * (shifted(j) + shifted(2 * r - j)) for j in range(r))


def _reflect_pad(x: Tensor, r: int, dim: int) -> Tensor:
    """F.pad(mode="reflect") along one dim, as a concatenation (a buffer inductor writes once)."""
    size = x.shape[dim]
    return torch.cat([x.narrow(dim, 1, r).flip(dim), x, x.narrow(dim, size - r - 1, r).flip(dim)], dim=dim)


def solarize(x: Tensor, threshold) -> Tensor:
    """Invert pixels x >= threshold (x -> 1 - x); per-sample threshold."""
    return torch.where(x >= _per_sample(threshold, x), 1 - x, x)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    if torch.compiler.is_compiling():  # constants of the compiled code: no copy at run time
        mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
        return (x - mean) / std
    return (x - _channel_constants(mean, x)).div_(_channel_constants(std, x))


def _channel_constants(values: Sequence[float], x: Tensor) -> Tensor:
    """(1, C, 1, 1) numbers on x's device, written by fills: no host-to-device copy."""
    out = x.new_empty(1, len(values), 1, 1)
    for i, v in enumerate(values):
        out[:, i].fill_(v)
    return out


# --- color jitter in each sample's order ------------------------------------------------------


# Slot templates for color_jitter: each slot lists the ops it may apply (else it is the identity).
# Every order of the four ops embeds in both (tests check all 24). Eager: hue, an HSV round trip
# of ~30 kernels, runs once, in the middle; blends (brightness, contrast, saturation) around it.
# Compiled: pointwise ops fuse into one loop, but every contrast needs the mean of the image so
# far, a reduction, which the fused loop must compute first. One hue slot in the middle (every
# sample's hue lands there), a contrast slot on either side of it, brightness/saturation blends
# between: measured 1.5x faster compiled than one contrast slot between two hue slots.
_BCS, _BS = (BRIGHTNESS, CONTRAST, SATURATION), (BRIGHTNESS, SATURATION)
EAGER_SLOTS = (_BCS, _BCS, _BCS, (HUE,), _BCS, _BCS, _BCS)
COMPILED_SLOTS = (_BS, _BS, (CONTRAST,), _BS, _BS, (HUE,), _BS, _BS, (CONTRAST,), _BS, _BS)
IDENTITY = 4  # a slot no op of the sample landed in


def slot_ops(order: Tensor, template: Sequence[Sequence[int]]) -> Tensor:
    """(N, 4) orders -> (N, len(template)): the op each slot applies to each sample, or IDENTITY.

    Each sample's ops go, in its order, to the earliest following slot that allows them (greedy
    earliest placement embeds any order that embeds at all). Tensor ops only: traceable.
    """
    n, t = order.shape[0], len(template)
    nxt = _next_slot_table(template, order.device)
    slots = torch.full((n, t + 1), IDENTITY, dtype=torch.int64, device=order.device)
    pos = torch.zeros(n, dtype=torch.int64, device=order.device)
    for k in range(4):
        op = order[:, k]
        at = nxt[pos, op]
        slots.scatter_(1, at[:, None], op[:, None])
        pos = at + 1
    return slots[:, :t]  # column t collects what did not embed: no template here leaves any


def _next_slot_table(template: Sequence[Sequence[int]], device) -> Tensor:
    """(t + 1, 4) int64: [pos, op] = the first slot >= pos that allows op (t if none).

    Built on the device from one integer: a fill and a few small kernels, where a table made on
    the host needs a host-to-device copy (blocking, unless pinned) for every view."""
    t = len(template)
    bits = sum(1 << (4 * k + op) for k, allowed in enumerate(template) for op in set(allowed))
    shifts = torch.arange(4 * t, device=device).view(t, 4)
    allowed = (torch.full((), bits, dtype=torch.int64, device=device) >> shifts) & 1 == 1
    slot = torch.arange(t + 1, device=device)
    later = slot[None, :t, None] >= slot[:, None, None]  # [pos, s, 1]: slot s is at or after pos
    return torch.where(allowed[None] & later, slot[None, :t, None], t).amin(dim=1)


def color_jitter(x: Tensor, p) -> Tensor:
    """Brightness, contrast, saturation and hue, each sample in its own order (`p.order`).

    This is torchvision's ColorJitter per sample (no masking: see `apply_view`). The ops run
    slot by slot over the whole batch (`slot_ops`, EAGER_SLOTS): in a blend slot each sample
    blends with its partner (0 for brightness, the mean of its grayscale image for contrast, the
    grayscale image for saturation; factor 1 for the identity, which is exact), the grayscale
    image computed once per slot; in a hue slot the samples whose hue lands there rotate it.
    """
    return jitter_slots([x], p, EAGER_SLOTS, lambda c: rgb_to_grayscale(c[0]),
                         lambda c, h: [adjust_hue(c[0], h)])[0]


def jitter_slots(chans: list[Tensor], p, template, luma_of, hue_of) -> list[Tensor]:
    """The slot loop of `color_jitter` over `chans`: [x] (N, 3, H, W), or three (N, 1, H, W)
    channel planes; luma_of(chans) gives the grayscale image, hue_of(chans, h) the hue-rotated
    chans. `p`: the jitter's parameters (order, brightness, contrast, saturation, hue)."""
    x = chans[0]
    slots = slot_ops(p.order.to(x.device), template)
    factors = torch.stack([p.brightness, p.contrast, p.saturation, torch.ones_like(p.hue),
                           torch.ones_like(p.hue)], dim=1).to(x.device, x.dtype)
    h = _per_sample(p.hue, x)
    one_hue_slot = sum(allowed == (HUE,) for allowed in template) == 1  # every sample's hue is there
    for k, allowed in enumerate(template):
        op = slots[:, k, None]
        if allowed == (HUE,):
            hued = hue_of(chans, h)
            chans = hued if one_hue_slot else [torch.where(bcast(op == HUE), a, c) for a, c in zip(hued, chans)]
            continue
        gray = luma_of(chans)
        # Blend partner: gray for saturation, its mean for contrast, 0 for brightness and identity.
        other = gray.mean(dim=(1, 2, 3), keepdim=True) * _mask(op, CONTRAST, x) if CONTRAST in allowed else 0
        if SATURATION in allowed:
            other = torch.addcmul(torch.as_tensor(other, dtype=x.dtype, device=x.device), gray,
                                  _mask(op, SATURATION, x))
        f = bcast(factors.gather(1, op))
        chans = [_blend(c, other, f) for c in chans]
    return chans


def _mask(op: Tensor, which: int, x: Tensor) -> Tensor:
    return bcast(op == which).to(x.dtype)


def bcast(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def to_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (torchvision's to_dtype scale); floats -> float32."""
    # Plain NCHW inside: per-channel slices of a channels_last CPU tensor are many times slower.
    y = x.to(torch.float32, memory_format=torch.contiguous_format)
    return y.mul_(1.0 / 255) if x.dtype == torch.uint8 else y   # a uint8 x was copied: mul_ is safe

