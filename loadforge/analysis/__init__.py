"""Figures from results: SLO and scaling verdicts, comparisons, noise, trends, archives."""
