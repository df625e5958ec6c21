"""Tables -> the papers' figures, verdicts on their claims, and a report (never a run's memory)."""
