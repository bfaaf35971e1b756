"""loadforge: load tester and benchmark harness for HTTP services behind load balancers."""

__version__ = "0.1.0"
