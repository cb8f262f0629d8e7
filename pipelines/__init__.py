"""Data in for fastbt: dataset formats (FFCV .beton, DALI webdataset shards) and two-view loaders.

This package never imports `fastbt`: it can be used (and tested) on its own.
"""
