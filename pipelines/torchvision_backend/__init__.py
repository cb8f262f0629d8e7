"""The torchvision backend, the reference: an ImageNet-layout image folder read in place with PIL in
DataLoader workers (`reader`), and the official Barlow Twins per-image transform, the baseline the
fast pipelines are measured against (`official`). No writer: nothing to convert.
"""

from __future__ import annotations

from pipelines.backends import Backend, register


def crops(path, **kwargs):
    """The two-view crop source (pipelines.backends.Backend.crops)."""
    from pipelines.torchvision_backend.reader import torchvision_crops

    return torchvision_crops(path, **kwargs)


def eval_crops(path, **kwargs):
    from pipelines.torchvision_backend.reader import center_crop_loader

    return center_crop_loader(path, **kwargs)


register("torchvision", Backend(crops, eval_crops))
