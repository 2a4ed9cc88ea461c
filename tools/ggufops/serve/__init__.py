"""`ggufops serve`: the OpenAI-compatible server, its model table and metrics."""
