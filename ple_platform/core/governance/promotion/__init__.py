"""Promotion: the model registry, the promotion rules, the champion-challenger flow and challenger evaluation."""
