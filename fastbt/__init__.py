"""fastbt: fast Barlow Twins self-supervised pretraining."""

__version__ = "0.1.0"
