"""The registry: model versions, environments and policy files, their schemas and validation."""
