"""GGUF artifacts: the local store, S3 and DVC, pulling and registering, GGUF headers."""
