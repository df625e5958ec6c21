"""What an experiment is: the spec document, its one-line errors, the experiment it resolves to (recorded in OUT), and the units its studies expand to."""
