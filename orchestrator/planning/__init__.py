"""The dry run: counts, resources, fits and device time, from rates given or calibrated."""
