"""unravel orchestrator: Ray sweeps, Parquet storage, CLI and analysis."""
