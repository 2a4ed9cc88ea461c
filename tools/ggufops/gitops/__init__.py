"""Git operations: environment files, deploy, rollback, history and the GitHub client."""
