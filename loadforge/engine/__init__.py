"""The engine's Python side beside its .pxd/.pxi: what it is fed (requests.py, tables.py) and
what it records, read as hdrh histograms (histogram.py)."""
