"""policy_search."""
