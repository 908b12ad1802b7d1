"""The 13 tasks: their spec, labels from month t+1, and the time split."""
