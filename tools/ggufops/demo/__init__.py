"""`ggufops demo`: the whole story, end to end, on embedded defaults."""
