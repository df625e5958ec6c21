"""What an experiment is: the spec document, its one-line errors, and the units its studies expand to."""
