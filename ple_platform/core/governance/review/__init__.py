"""Monthly ops and audit reviews (SPEC §10): a deterministic checklist over the month's evidence, then, when an API
key is configured, a 3-vote LLM consensus that can only make the verdict stricter."""
