"""Offline stages of slfer: dataset adapters, image decoding, face parsing and HDF5 shards."""

__version__ = "0.1.0"
