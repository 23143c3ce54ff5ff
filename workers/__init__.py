"""Data plane of autotune: evaluators run as Ray tasks/actors. Imports torch lazily; never opens the DB."""
