"""Shared pytest fixtures live in the `testing` package; each area lists its module here."""

pytest_plugins = [
    "testing.repos",
    "testing.scratch",
    "testing.fakegithub",
    "testing.workflows",
    "testing.s3",
    "testing.toys",
    "testing.runtime",
    "testing.realmodels",
    "testing.githttp",
    "testing.fleet",
]
