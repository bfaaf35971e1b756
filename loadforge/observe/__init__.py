"""Beside a run: metric pollers and timed fault actions."""
