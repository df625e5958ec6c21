"""Running an experiment on Ray: the cluster, preflight, training trials, the evaluators and the driver that writes."""
