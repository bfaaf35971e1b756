"""The Parquet archive of runs and the HdrHistogram bridge."""
