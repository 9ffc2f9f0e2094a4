"""The run history: each run's facts and version, DVC bookkeeping, the end of a nightly run, alerts."""
