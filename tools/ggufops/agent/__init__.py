"""`ggufops agent`: the sync loop that makes a host serve what its environment names."""
