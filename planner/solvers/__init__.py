"""Placement methods: the optimiser and the baselines people use by hand."""
