"""Fused ops. Importing this package registers the `fastbt::` torch.library custom ops."""
from fastbt.train.ops.reference import reference_loss
from fastbt.train.ops.xcorr import barlow_twins_loss

__all__ = ["barlow_twins_loss", "reference_loss"]
