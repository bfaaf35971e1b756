"""The engine's Python side: what it is fed (requests.py, tables.py) beside its .pxd/.pxi."""
