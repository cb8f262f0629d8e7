"""The Barlow Twins view recipe as data, and its photometric half as batched torch ops.

Loaders produce the geometric half (random-resized-crop + flip) as uint8 crops on the training
device; this package does the rest for a whole batch at once: color jitter, grayscale, gaussian
blur, solarize, normalize.

    recipe.py   AugSpec, ViewSpec: the recipe as data (probabilities, ranges, sizes)
    table.py    OPS: the ordered table of ops (sample, apply, apply_planes, reference), ViewParams,
                sample_params
    ops.py      the batched ops themselves (float NCHW in [0, 1], per-sample parameters)
    view.py     apply_view (eager) / compiled_apply_view, augment_pair, Augment (what the loader calls)
"""

import importlib

from pipelines.augment.recipe import IMAGENET_MEAN, IMAGENET_STD, AugSpec, ViewSpec, blur_kernel_size

# The torch half is imported when first asked for: the config schema holds an AugSpec, and reading a
# config must not load torch (`fastbt convert`'s shard writers fork from a process that read one).
_TORCH_HALF = {
    "ops": ["BRIGHTNESS", "COMPILED_SLOTS", "CONTRAST", "EAGER_SLOTS", "HUE", "IDENTITY", "SATURATION",
            "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "color_jitter",
            "gaussian_blur", "normalize", "rgb_to_grayscale", "slot_ops", "solarize", "to_float"],
    "table": ["OPS", "Op", "ViewParams", "params_to", "sample_params"],
    "view": ["Augment", "apply_view", "augment", "augment_pair", "compiled_apply_view"],
}
_HOME = {name: module for module, names in _TORCH_HALF.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipelines.augment.{_HOME[name]}"), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


__all__ = ["AugSpec", "ViewSpec", "IMAGENET_MEAN", "IMAGENET_STD", "blur_kernel_size", "OPS", "Op",
           "ViewParams", "params_to", "sample_params", "Augment", "apply_view", "augment", "augment_pair",
           "compiled_apply_view", "normalize", "to_float", "rgb_to_grayscale", "adjust_brightness",
           "adjust_contrast", "adjust_saturation", "adjust_hue", "color_jitter", "gaussian_blur", "solarize",
           "slot_ops", "EAGER_SLOTS", "COMPILED_SLOTS", "IDENTITY", "BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"]
