"""pawflow's Prefect flows: one per stage (`python -m flows.<stage>`), plus the whole pipeline."""
