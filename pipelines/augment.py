"""The Barlow Twins view recipe as data, and its photometric half as batched torch ops.

Loaders produce the geometric half (random-resized-crop + flip) as uint8 crops on the training
device; `augment` does the rest for a whole batch at once: color jitter, grayscale, gaussian blur,
solarize, normalize. Every random choice is a per-sample tensor drawn by `sample_params` from a
CPU `torch.Generator`, so a seed gives the same views on any device, and each op can be checked
sample by sample against `torchvision.transforms.v2.functional` (tests/test_augment.py).

Ops take float NCHW images in [0, 1] and per-sample parameters as (N,) tensors (or one number for
the whole batch). They mirror torchvision's float semantics: contrast blends with the mean of the
grayscale image, hue goes through HSV, blur pads by reflection, solarize inverts x >= threshold.
Max abs difference from torchvision per sample (tests assert the bound in brackets; the issue
allows 2/255): brightness 0 [1e-6], contrast 1.2e-7 [1e-6], saturation 1.8e-7 [1e-6], hue 1.4e-6
[1e-5], grayscale 1.2e-7 [1e-6], blur 1.0e-6 [1e-5], solarize 0 [0], normalize 0 [1e-6].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.resolution import Resolution, size_at

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# On CPU, views are computed this many bytes of float32 input at a time (see apply_view); the
# compiled graph at most COMPILED_CPU_CHUNK_BYTES at a time (see compiled_apply_view).
CPU_CHUNK_BYTES = 2 << 20
COMPILED_CPU_CHUNK_BYTES = 5 << 20

# torchvision's ColorJitter numbering (its fn_idx): the order tensor holds these.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


# --- the recipe -------------------------------------------------------------------------------

def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ValueError(f"augmentation: {name} must be {what}")


@dataclass(frozen=True)
class ViewSpec:
    """One view of the official recipe (facebookresearch/barlowtwins main.py); defaults: view 1.

    `solarize_threshold` is on the [0, 1] float scale and pixels x >= threshold are inverted, as in
    torchvision's solarize and PIL's ImageOps.solarize (the official code: uint8 v >= 128). 0.5 is
    that 128: for every uint8-derived value 127/255 < 0.5 < 128/255 gives the same pixels, and for
    continuous values x >= 0.5 is exactly round(255 x) >= 128.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)      # random-resized-crop area fraction (loaders)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)   # its aspect-ratio range (loaders)
    flip_p: float = 0.5                                # horizontal flip (loaders)
    jitter_p: float = 0.8
    brightness: float = 0.4                            # factor ~ U(max(0, 1 - b), 1 + b)
    contrast: float = 0.4                              # factor ~ U(max(0, 1 - c), 1 + c)
    saturation: float = 0.2                            # factor ~ U(max(0, 1 - s), 1 + s)
    hue: float = 0.1                                   # shift ~ U(-h, h), h <= 0.5
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)       # pixels, ~ U(lo, hi) as the official code
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self):
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p", "solarize_threshold"):
            _require(0 <= getattr(self, name) <= 1, name, "in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            _require(getattr(self, name) >= 0, name, ">= 0")
        _require(0 <= self.hue <= 0.5, "hue", "in [0, 0.5]")
        _require(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale", "0 < lo <= hi <= 1")
        _require(0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", "0 < lo <= hi")
        _require(0 < self.blur_sigma[0] <= self.blur_sigma[1], "blur_sigma", "0 < lo <= hi")


# The largest crop accepted: 4.5x the recipe's 224; a typo (2240) would otherwise show only as an
# out-of-memory error after the data is loaded. Larger crops than the stored images are upsampled.
MAX_SIZE = 1024


@dataclass(frozen=True)
class AugSpec:
    """The two-view recipe: view 2 differs from view 1 by blur p 0.1 and solarize p 0.2."""

    view1: ViewSpec = ViewSpec()
    view2: ViewSpec = ViewSpec(blur_p=0.1, solarize_p=0.2)
    size: int = 224                                    # crop output, pixels (the final, evaluated size)
    interpolation: str = "bicubic"                     # the official resize (loaders)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resolution: Resolution = Resolution()              # progressive resolution; off by default

    def __post_init__(self):
        _require(0 < self.size <= MAX_SIZE, "size", f"in 1..{MAX_SIZE}")
        _require(self.resolution.start <= self.size, "resolution.start", "<= size (the final size)")
        blurred = [v.blur_sigma[1] for v in (self.view1, self.view2) if v.blur_p > 0]
        if blurred:  # reflect padding needs more pixels a side than half the kernel
            k = blur_kernel_size(max(blurred))
            name = "resolution.start" if self.resolution.on else "size"
            _require(min(self.resolution.start if self.resolution.on else self.size, self.size) > k // 2,
                     name, f"more than {k // 2} px: the blur's {k} px kernel (sigma up to {max(blurred):g}) "
                     "pads each side by reflection")
        _require(len(self.mean) == 3 and len(self.std) == 3, "mean/std", "3 numbers each")
        _require(all(s > 0 for s in self.std), "std", "> 0")


    def size_at(self, epoch: int) -> int:
        """The crop size of `epoch` (pipelines.resolution): `size` unless the schedule is on."""
        return size_at(self.resolution, self.size, epoch)


def blur_kernel_size(sigma_max: float) -> int:
    """Gaussian kernel width used for a sigma range: +-4 sigma_max, odd (17 px for sigma <= 2).

    The official blur is PIL's, whose support is not truncated; +-4 sigma leaves at most 1.2e-5
    (measured at sigma 2) against an untruncated kernel, where +-3 sigma (13 px) leaves 7e-4. The
    23 px of SimCLR-style reimplementations is 10% of 224 px, not a function of sigma.
    """
    return 2 * math.ceil(4 * sigma_max) + 1


# --- per-sample random parameters -------------------------------------------------------------

@dataclass(frozen=True)
class ViewParams:
    """Everything random about one view of N images: (N,) tensors, `order` (N, 4).

    Values are drawn for every sample; the bool masks say which ops apply. So the params double as
    a record of what `apply_view` did to each sample.
    """

    jitter: Tensor       # bool
    brightness: Tensor   # factors; 1 is identity
    contrast: Tensor
    saturation: Tensor
    hue: Tensor          # shift in turns; 0 is identity
    order: Tensor        # int64, a permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE per row
    gray: Tensor         # bool
    blur: Tensor         # bool
    sigma: Tensor        # blur sigma, pixels
    solarize: Tensor     # bool

    def split(self, size: int) -> list[ViewParams]:
        parts = {f.name: getattr(self, f.name).split(size) for f in dataclasses.fields(self)}
        return [ViewParams(**dict(zip(parts, chunk))) for chunk in zip(*parts.values())]

    def to(self, device) -> ViewParams:
        return params_to(device, self)[0]


def params_to(device, *views: ViewParams) -> list[ViewParams]:
    """Several views' parameters on `device` through one host-to-device copy.

    Every field is packed (as float32: the bools, the 0..3 of `order` and the factors are exact
    there) into the rows of one pinned buffer, copied once without blocking; on the device the
    float fields are views of its rows, the bool and int fields one small kernel each. Per field,
    that was ~25 small copies per step.
    """
    if all(t.device == torch.device(device) for p in views for t in _fields(p)):
        return list(views)
    rows = [t.reshape(len(t), -1).T.float() for p in views for t in _fields(p)]
    packed = _to_device(torch.cat(rows), device).split([len(r) for r in rows])
    fields = iter(packed)
    return [ViewParams(**{f.name: _unpack(next(fields), getattr(p, f.name).dtype)
                          for f in dataclasses.fields(p)}) for p in views]


def _fields(p: ViewParams) -> list[Tensor]:
    return [getattr(p, f.name) for f in dataclasses.fields(p)]


def _unpack(rows: Tensor, dtype: torch.dtype) -> Tensor:
    """(k, N) packed rows -> the field: (N,) for k == 1, else (N, k), in its own dtype."""
    t = rows[0] if len(rows) == 1 else rows.T
    return t if dtype == torch.float32 else t.to(dtype)


def sample_params(view: ViewSpec, n: int, generator: torch.Generator) -> ViewParams:
    """Draw a view's parameters for n samples from a CPU generator.

    The same draws happen whatever the probabilities, so a seed fixes one stream of numbers.
    """

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    def coin(p):
        return torch.rand(n, generator=generator) < p

    return ViewParams(
        jitter=coin(view.jitter_p),
        brightness=uniform(max(0.0, 1 - view.brightness), 1 + view.brightness),
        contrast=uniform(max(0.0, 1 - view.contrast), 1 + view.contrast),
        saturation=uniform(max(0.0, 1 - view.saturation), 1 + view.saturation),
        hue=uniform(-view.hue, view.hue),
        order=torch.rand(n, 4, generator=generator).argsort(dim=1),  # uniform random permutations
        gray=coin(view.gray_p),
        blur=coin(view.blur_p),
        sigma=uniform(*view.blur_sigma),
        solarize=coin(view.solarize_p),
    )


def _to_device(t: Tensor, device) -> Tensor:
    # A pinned, non_blocking host-to-GPU copy never waits for the GPU; a pageable one may.
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


# --- batched ops: float NCHW in [0, 1], per-sample parameters ---------------------------------

def _per_sample(v, x: Tensor):
    """(N,) values -> (N, 1, 1, 1) on x's device; a number stays a number (no host-to-GPU copy)."""
    return v.to(x.device, x.dtype).reshape(-1, 1, 1, 1) if isinstance(v, Tensor) else float(v)


def _blend(x: Tensor, other: Tensor, f) -> Tensor:
    # torchvision's _blend, x * f + other * (1 - f) clamped to [0, 1], as one lerp.
    return torch.lerp(other, x, f).clamp_(0, 1)


def _luma(r: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """ITU-R 601 luma with torchvision's weights."""
    return 0.2989 * r + 0.587 * g + 0.114 * b


def rgb_to_grayscale(x: Tensor, num_output_channels: int = 1) -> Tensor:
    """ITU-R 601 luma with torchvision's weights; 3 output channels repeat it (a view)."""
    gray = _luma(*x.unbind(1)).unsqueeze(1)
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


def _hue_planes(r: Tensor, g: Tensor, b: Tensor, h: Tensor) -> list[Tensor]:
    """adjust_hue on separate channel planes, for compiled code (see `_apply_view_planes`)."""
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
    return _separable_conv(x, _gaussian_kernel1d(sigma, kernel_size))


def _gaussian_kernel1d(sigma: Tensor, kernel_size: int) -> Tensor:
    """(N,) sigma -> (N, kernel_size) normalized kernels (torchvision's, from a softmax)."""
    t = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - (kernel_size - 1) / 2
    return torch.softmax(-0.5 * (t / sigma[:, None]) ** 2, dim=1)


def _separable_conv(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve sample i with kernel[i] along W, then H; reflect padding keeps the size."""
    n, c, h, w = x.shape
    k = kernel.shape[1]
    # Fold the batch into channels so one grouped conv gives each sample its own kernel.
    weight = kernel.repeat_interleave(c, dim=0)
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


def _separable_conv_by_shifts(x: Tensor, kernel: Tensor) -> Tensor:
    """`_separable_conv` with symmetric kernels (gaussian, or the one-hot identity) as sums of
    shifted slices of explicitly padded copies: pointwise code with contiguous loads, which inductor
    vectorizes (the grouped conv is a slow opaque call here, and reflect padding left to indexing
    makes it fall back to scalar loads)."""
    _, _, h, w = x.shape
    r = kernel.shape[1] // 2
    taps = [_bcast(kernel[:, j]) for j in range(r + 1)]
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


# --- a view ----------------------------------------------------------------------------------

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


def color_jitter(x: Tensor, p: ViewParams) -> Tensor:
    """Brightness, contrast, saturation and hue, each sample in its own order (`p.order`).

    This is torchvision's ColorJitter per sample (no masking: see `apply_view`). The ops run
    slot by slot over the whole batch (`slot_ops`, EAGER_SLOTS): in a blend slot each sample
    blends with its partner (0 for brightness, the mean of its grayscale image for contrast, the
    grayscale image for saturation; factor 1 for the identity, which is exact), the grayscale
    image computed once per slot; in a hue slot the samples whose hue lands there rotate it.
    """
    return _jitter_slots([x], p, EAGER_SLOTS, lambda c: rgb_to_grayscale(c[0]),
                         lambda c, h: [adjust_hue(c[0], h)])[0]


def _jitter_slots(chans: list[Tensor], p: ViewParams, template, luma, hue) -> list[Tensor]:
    """The slot loop of `color_jitter` over `chans`: [x] (N, 3, H, W), or three (N, 1, H, W)
    channel planes; luma(chans) gives the grayscale image, hue(chans, h) the hue-rotated chans."""
    x = chans[0]
    slots = slot_ops(p.order.to(x.device), template)
    factors = torch.stack([p.brightness, p.contrast, p.saturation, torch.ones_like(p.hue),
                           torch.ones_like(p.hue)], dim=1).to(x.device, x.dtype)
    h = _per_sample(p.hue, x)
    one_hue_slot = sum(allowed == (HUE,) for allowed in template) == 1  # every sample's hue is there
    for k, allowed in enumerate(template):
        op = slots[:, k, None]
        if allowed == (HUE,):
            hued = hue(chans, h)
            chans = hued if one_hue_slot else [torch.where(_bcast(op == HUE), a, c) for a, c in zip(hued, chans)]
            continue
        gray = luma(chans)
        # Blend partner: gray for saturation, its mean for contrast, 0 for brightness and identity.
        other = gray.mean(dim=(1, 2, 3), keepdim=True) * _mask(op, CONTRAST, x) if CONTRAST in allowed else 0
        if SATURATION in allowed:
            other = torch.addcmul(torch.as_tensor(other, dtype=x.dtype, device=x.device), gray,
                                  _mask(op, SATURATION, x))
        f = _bcast(factors.gather(1, op))
        chans = [_blend(c, other, f) for c in chans]
    return chans


def _mask(op: Tensor, which: int, x: Tensor) -> Tensor:
    return _bcast(op == which).to(x.dtype)


def _bcast(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def to_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (torchvision's to_dtype scale); floats -> float32."""
    # Plain NCHW inside: per-channel slices of a channels_last CPU tensor are many times slower.
    y = x.to(torch.float32, memory_format=torch.contiguous_format)
    return y.mul_(1.0 / 255) if x.dtype == torch.uint8 else y   # a uint8 x was copied: mul_ is safe


def apply_view(x: Tensor, view: ViewSpec, p: ViewParams,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """The photometric half of `view` with drawn params `p` (on x's device): normalized, in
    `dtype` (the training dtype: bf16 on CUDA, fp32 on CPU), channels-last if x is.

    Order as the official transform: jitter (p), grayscale (p, 3 channels), blur (p), solarize (p),
    normalize; computed in fp32 whatever `dtype`. Ops whose probability is 0 are skipped
    outright; masks select per sample without loops over samples or data-dependent shapes, so
    the function compiles with fullgraph=True (`compiled_apply_view`), into a few fused loops.
    """
    if torch.compiler.is_compiling():
        return _apply_view_planes(x, view, p, mean, std, dtype)
    if x.device.type == "cpu":
        # Eager CPU ops on a whole batch are bound by faulting in fresh memory for every
        # intermediate; a few images at a time stay in cache (~2x faster at 224 px).
        step = _images_per(CPU_CHUNK_BYTES, x)
        return _in_chunks(_apply_view, step, x, view, p, mean, std, dtype)
    return _apply_view(x, view, p, mean, std, dtype)


def _images_per(chunk_bytes: int, x: Tensor) -> int:
    """How many of x's images fit chunk_bytes as float32 (at least 1)."""
    return max(1, chunk_bytes // (4 * x.shape[1:].numel()))


def _in_chunks(fn, step: int, x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    """fn on x and p step samples at a time, concatenated (in x's memory format)."""
    if len(x) <= step:
        return fn(x, view, p, mean, std, dtype)
    return torch.cat([fn(xc, view, pc, mean, std, dtype) for xc, pc in zip(x.split(step), p.split(step))])


def _apply_view(x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    x = to_float(x)
    if view.jitter_p > 0:
        x = torch.where(_bcast(p.jitter), color_jitter(x, p), x)
    if view.gray_p > 0:
        x = torch.where(_bcast(p.gray), rgb_to_grayscale(x, 3), x)
    if view.blur_p > 0:
        x = _separable_conv(x, _blur_kernels(view, p, x.device, x.dtype))
    if view.solarize_p > 0:
        # Samples not solarized get a threshold no pixel reaches.
        x = solarize(x, torch.where(p.solarize, view.solarize_threshold, math.inf))
    x = normalize(x, mean, std)
    return x.to(dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _apply_view_planes(x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    """`_apply_view` for compiled code: the same ops on three channel planes.

    Inductor fuses pointwise ops into the loop of their consumer. On a (N, 3, H, W) tensor that
    loop runs over channels too, and every channel-mixing op (gray, hue) makes each channel's
    code recompute all three: 3x the work. On separate planes the three outputs share one loop
    over pixels, and each pixel's chain runs once. The blur is sums of shifted slices (fused);
    the jitter follows COMPILED_SLOTS.
    """
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    chans = list(to_float(x).split(1, dim=1))
    if view.jitter_p > 0:
        jittered = _jitter_slots(chans, p, COMPILED_SLOTS, lambda c: _luma(*c), lambda c, h: _hue_planes(*c, h))
        chans = [torch.where(_bcast(p.jitter), j, c) for j, c in zip(jittered, chans)]
    if view.gray_p > 0:
        gray = _luma(*chans)
        chans = [torch.where(_bcast(p.gray), gray, c) for c in chans]
    if view.blur_p > 0:
        kernel = _blur_kernels(view, p, x.device, chans[0].dtype)
        chans = [_separable_conv_by_shifts(c, kernel) for c in chans]
    if view.solarize_p > 0:
        threshold = _bcast(torch.where(p.solarize, view.solarize_threshold, math.inf))
        chans = [torch.where(c >= threshold, 1 - c, c) for c in chans]
    chans = [(c - m) / s for c, m, s in zip(chans, mean, std)]
    return _stack_planes(chans, channels_last).to(
        dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _stack_planes(chans: list[Tensor], channels_last: bool) -> Tensor:
    """Three (N, 1, H, W) planes -> (N, 3, H, W), laid out as asked, so the output is written once
    (inductor lays a torch.cat of the planes out channels-last, and NCHW then cost another copy)."""
    planes = [c.squeeze(1) for c in chans]
    if channels_last:
        return torch.stack(planes, dim=-1).permute(0, 3, 1, 2)
    return torch.stack(planes, dim=1)


def _blur_kernels(view: ViewSpec, p: ViewParams, device, dtype) -> Tensor:
    """(N, k) kernels: gaussian for blurred samples, one-hot (identity, exact) for the rest."""
    k = blur_kernel_size(view.blur_sigma[1])
    identity = (torch.arange(k, device=device) == k // 2).to(dtype)
    return torch.where(p.blur[:, None], _gaussian_kernel1d(p.sigma.to(dtype), k), identity)


_compiled_apply_view = None


def compiled_apply_view(x: Tensor, view: ViewSpec, p: ViewParams,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """`apply_view` through torch.compile(fullgraph=True), compiled once per shape and view.

    On CPU the graph runs on equal chunks of the batch (one chunk shape per batch shape, so one
    graph), as the eager path does: each of its loops passes over its whole input, and the buffers
    between them are fresh memory. Interleaved with eager work (as in the bench), 8 images at
    224 px at a time ran ~1.5x faster than a batch of 32 (4: about the same, 16: slower). Each
    chunk goes through the graph in NCHW (`_compiled_cpu_chunk`).
    """
    global _compiled_apply_view
    if _compiled_apply_view is None:
        _compiled_apply_view = torch.compile(apply_view, fullgraph=True, dynamic=False)
    if x.device.type != "cpu":
        return _compiled_apply_view(x, view, p, mean, std, dtype)
    step = _largest_divisor(len(x), _images_per(COMPILED_CPU_CHUNK_BYTES, x))
    return _in_chunks(_compiled_cpu_chunk, step, x, view, p, mean, std, dtype)


def _compiled_cpu_chunk(x: Tensor, view: ViewSpec, p: ViewParams, mean, std, dtype) -> Tensor:
    """The graph on an NCHW copy of a channels-last chunk, its output copied back to channels-last:
    inductor's CPU loops over interleaved (channels-last) pixels ran ~1.5x slower than the NCHW
    graph plus these two eager layout copies (uint8 in, output out)."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return _compiled_apply_view(x, view, p, mean, std, dtype)
    out = _compiled_apply_view(x.contiguous(), view, p, mean, std, dtype)
    return out.contiguous(memory_format=torch.channels_last)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def augment(x: Tensor, view: ViewSpec, generator: torch.Generator,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
            dtype: torch.dtype = torch.float32, compiled: bool = False) -> Tensor:
    """Draw params for x's N samples from `generator` (CPU), move them to x's device, apply."""
    params = sample_params(view, x.shape[0], generator).to(x.device)
    return (compiled_apply_view if compiled else apply_view)(x, view, params, mean, std, dtype)


def augment_pair(x1: Tensor, x2: Tensor, spec: AugSpec, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32, compiled: bool = False) -> tuple[Tensor, Tensor]:
    """Both views of a batch of crop pairs: view 1 then view 2 from the same generator (the
    parameters of both reach the device in one copy)."""
    p1 = sample_params(spec.view1, x1.shape[0], generator)
    p2 = sample_params(spec.view2, x2.shape[0], generator)
    p1, p2 = params_to(x1.device, p1, p2)
    run = compiled_apply_view if compiled else apply_view
    return (run(x1, spec.view1, p1, spec.mean, spec.std, dtype),
            run(x2, spec.view2, p2, spec.mean, spec.std, dtype))
