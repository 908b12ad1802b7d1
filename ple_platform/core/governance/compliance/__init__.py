"""Compliance: fairness, drift, the evidence collected for a month and the compliance report."""
