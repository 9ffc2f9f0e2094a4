"""pawflow's logic: one module per stage plus shared pieces; plain typed functions, no Prefect needed."""
