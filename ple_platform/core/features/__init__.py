"""The 17 feature groups: one spec list (``spec.FEATURE_GROUPS``) and one pure-function module per algorithm."""
