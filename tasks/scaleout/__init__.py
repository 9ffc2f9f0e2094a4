"""Work beyond one process: Dask workers for per-photo work, training across several machines."""
