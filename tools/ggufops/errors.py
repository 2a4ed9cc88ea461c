"""The one exception hierarchy; error_handler.py maps it to exit codes."""

from __future__ import annotations


class GgufopsError(Exception):
    """An expected failure: printed as one line, exit code 1."""

    exit_code = 1


class UsageError(GgufopsError):
    """The command was called wrongly: exit code 2."""

    exit_code = 2


class CheckFailed(GgufopsError):
    """A check (validate, gate) found problems; they were already printed."""


# --- foundation --------------------------------------------------------------


class YamlError(GgufopsError):
    """A YAML file cannot be read as the data it must hold."""


class BadReference(UsageError):
    """A `name@X.Y.Z` reference on the command line is malformed."""


class UnknownEnvironment(UsageError):
    """An environment named on the command line has no file."""


class UnknownVersion(GgufopsError):
    """A referenced model version is not in the registry."""


class NotARegistry(GgufopsError):
    """The directory is not a ggufops registry."""


class GitError(GgufopsError):
    """A git command failed."""


# --- artifacts (S3, DVC, GGUF headers, register, pull, store) ---------------------------


class BadGguf(GgufopsError):
    """A file is not a GGUF model, or its header lacks what a model needs."""


class TruncatedGguf(BadGguf):
    """A GGUF file ends before its header or tensor data does."""


class LoadCheckFailed(BadGguf):
    """register's load check crashed (llama.cpp died by a signal) or gave no answer."""


class HeaderMismatch(GgufopsError):
    """A command-line flag disagrees with what the GGUF header says."""


class VersionExists(GgufopsError):
    """A model version is immutable: it cannot be registered twice."""


class UnknownParent(GgufopsError):
    """--parent names a version that is not registered."""


class S3ConfigError(GgufopsError):
    """The DVC remote's S3 settings are missing or unusable."""


class S3Error(GgufopsError):
    """An S3 request failed."""


class S3Unreachable(S3Error):
    """The S3 endpoint does not answer (connection refused, DNS, timeout)."""


class S3AuthError(S3Error):
    """The S3 endpoint rejected the credentials."""


class ObjectMissing(S3Error):
    """An artifact's object is not in the remote."""


class ChecksumMismatch(GgufopsError):
    """Downloaded bytes do not match the sha256 (or size) the registry records."""


class StoreError(GgufopsError):
    """The local artifact store refused or failed a write."""


class DvcError(GgufopsError):
    """A DVC operation (add, push) failed."""


class S3ServerError(GgufopsError):
    """The embedded SeaweedFS server could not be started or found."""


class ArtifactSizeMismatch(ChecksumMismatch):
    """An S3 object's length differs from the version file's artifact.size: the object was
    replaced or truncated. Permanent: downloading it again gives the same bytes."""


# --- models + gates (toy models, llama.cpp, bench, gate) --------------------------------


class ToyBuildError(GgufopsError):
    """A toy model cannot be built."""


class LlamaError(GgufopsError):
    """llama.cpp refused a model or failed while evaluating it."""


class SmokeTestFailed(GgufopsError):
    """A model did not load, did not generate, or produced non-finite logits."""


class EvalSetError(GgufopsError):
    """A version's pinned eval set is missing or does not match its sha256."""


class BenchError(GgufopsError):
    """A benchmark cannot run or its result cannot be recorded."""


class GateFailed(CheckFailed):
    """At least one gate failed; the message names model, metric and numbers."""


# --- runtime (serve, agent, apply log) ----------------------------------------------------


class ServeError(GgufopsError):
    """The inference server cannot start as configured."""


class ArtifactNotInStore(GgufopsError):
    """A model's file is not in the local content-addressed store."""


class ModelLoadFailed(GgufopsError):
    """A model could not be verified, loaded or smoke-tested; the old one keeps serving."""


class AgentError(GgufopsError):
    """The sync agent could not apply the desired state."""


class InvalidDesiredState(AgentError):
    """The environment at a commit is invalid or unusable; the agent refuses to apply it."""


class ServerUnreachable(AgentError):
    """The inference server does not answer."""


class ServerRefused(AgentError):
    """The inference server refused a request (its error is in the message)."""


class HealthCheckFailed(AgentError):
    """The server did not report the desired versions within the timeout."""


class ApplyLogError(GgufopsError):
    """The agent's SQLite apply log cannot be opened or written."""


class DownloadTimedOut(AgentError):
    """A batch of downloads did not finish within the agent's --download-timeout."""


class Superseded(AgentError):
    """A newer commit changed the desired state while an older one was being applied."""


# --- gitops (deploy, rollback, history, GitHub) --------------------------------------


class DirtyWorkTree(GgufopsError):
    """The working tree has uncommitted changes to tracked files."""


class BranchBehind(GgufopsError):
    """The local default branch lacks commits its remote has."""


class MissingRemote(GgufopsError):
    """A git remote the command needs is not configured."""


class AlreadyDeployed(GgufopsError):
    """The environment already runs the requested version."""


class PromotionRefused(GgufopsError):
    """The promotion policy does not let the version enter the environment yet."""


class BranchExists(GgufopsError):
    """The branch a deploy would create already exists."""


class PushRejected(GgufopsError):
    """The remote refused a push (non-fast-forward, protected branch, ...)."""


class NonFastForward(PushRejected):
    """The remote branch moved since it was fetched: someone else pushed first."""


class NothingToRollBack(GgufopsError):
    """The environment's history has no change that a rollback could undo."""


class ArtifactMissing(GgufopsError):
    """A rollback target's artifact is not in the S3 remote."""


class EnvironmentFileError(GgufopsError):
    """An environment file cannot be read or edited as ggufops expects."""


class GitHubError(GgufopsError):
    """A GitHub REST API request failed."""


class GitHubAuthError(GitHubError):
    """GitHub rejected the token (401/403)."""


# --- demo ----------------------------------------------------------------------------------


class DemoFailed(GgufopsError):
    """A step of the demo did not do what it must."""


# --- serve: chat templates ---------------------------------------------------------------


class ChatTemplateError(GgufopsError):
    """A version's chat template is unknown, or does not fit its GGUF file."""


# --- install: optional extras ---------------------------------------------------------------


class MissingExtra(GgufopsError):
    """A command needs a library from an optional extra that is not installed."""


# --- fleet: status published to S3, drift, waves -------------------------------------------


class S3ObjectError(GgufopsError):
    """A small S3 object (a fleet status) could not be written, read or listed."""


class FleetNotConverged(CheckFailed):
    """`fleet status`: a host serves other than the environment file says (exit 4)."""

    exit_code = 4


class FleetStale(CheckFailed):
    """`fleet status`: no drift seen, but a host has not reported recently (exit 5)."""

    exit_code = 5


# --- lifecycle, tiers, compatibility (issue 14) ---------------------------------------------


class LifecycleError(GgufopsError):
    """A lifecycle file is malformed, or a status change is not allowed from where it is."""


class VersionArchived(LifecycleError):
    """The version is archived: it may not be deployed or rolled back to until restored."""


class VersionDeprecated(LifecycleError):
    """The version is deprecated and the policy blocks deploying it (lifecycle.deprecated)."""


class TierError(GgufopsError):
    """A retention tier is not configured, or a copy between tiers did not verify."""


# --- progressive delivery: A/B results ---------------------------------------------------


class AbError(GgufopsError):
    """`ggufops ab` could not read a host's request window, or the model is not deployed."""


# --- trust (signed commits, webhooks) -------------------------------------------------------


class TrustError(GgufopsError):
    """The --trust file or the webhook secret cannot be used."""


class UntrustedCommit(InvalidDesiredState):
    """A commit the agent refuses to apply: unsigned, signed by a key not in --trust, a
    bad signature, or history rewritten under the applied commit. `reason` is a short code."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PointerError(GgufopsError):
    """The head pointer in S3 (fleet/<env>/HEAD) cannot be read or written."""
