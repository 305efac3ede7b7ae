import jobwire.model  # noqa: F401  (first: it builds the job model with every plug's trigger)
