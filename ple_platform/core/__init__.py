"""Pure domain code. Nothing under ``core`` imports Dagster: every algorithm is testable on its own."""
