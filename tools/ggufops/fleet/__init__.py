"""The fleet: what each host publishes to S3, `fleet status`, rollout waves."""
