"""Which commits the sync agent may apply: trusted signatures and no rewritten history.

With `--trust FILE` (git's SSH `allowed_signers` format, see ssh-keygen(1)) the agent applies
a commit only if git verifies its signature with a key listed there (`%G?` is `G`). Anything
else is refused, and the host keeps serving what it applied last:

  unsigned        the commit carries no signature
  untrusted-key   a valid signature by a key that is not in FILE
  bad-signature   the signature does not match the commit (forged or tampered)
  unverifiable    git cannot check it (a GPG signature, an expired or revoked key, ...)

Whatever `--trust` says, the branch must move forward: a commit that does not descend from
the applied one (a force-push, or the branch reset to an older commit) is refused as
`history-rewritten`, unless
  - with `--trust`, it is signed by a trusted key and its committer time (which the
    signature covers) is later than the applied commit's: a trusted person rewrote the
    branch; an old signed commit pushed again (a replay of an older state) is still refused;
  - or the agent runs with `--allow-rewrite` (then, with `--trust`, it must still be signed).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ggufops import git
from ggufops.errors import TrustError, UntrustedCommit

log = logging.getLogger("ggufops.trust")

_KEY_TYPE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|"
                       r"sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)$")
_FORMAT_HINT = ("expected `principals [options] key-type base64-key`, e.g. `alice@example.com "
                "namespaces=\"git\" ssh-ed25519 AAAA...` (ssh-keygen(1), ALLOWED SIGNERS)")


# --- the allowed_signers file -----------------------------------------------------------------


def _is_base64(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) > 16
    except (binascii.Error, ValueError):
        return False


def _line_keys(line: str) -> list[tuple[str, str]]:
    """The (key type, base64 key) pairs on one allowed_signers line."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        return []
    pairs = itertools.pairwise(tokens[1:])  # the principals come first
    return [(kind, blob) for kind, blob in pairs if _KEY_TYPE.match(kind) and _is_base64(blob)]


def check_allowed_signers(path: Path) -> int:
    """The number of keys in `path`; TrustError naming the file and line otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise TrustError(f"cannot read the --trust file {path}: {why}; write one allowed "
                         "signer per line (ssh-keygen(1), ALLOWED SIGNERS)") from None
    keys = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _line_keys(line):
            raise TrustError(f"{path}:{number}: not an allowed_signers line; {_FORMAT_HINT}")
        keys += 1
    if keys == 0:
        raise TrustError(f"{path} lists no keys, so no commit could ever be applied; "
                         f"add one per line: {_FORMAT_HINT}")
    return keys


def require_ssh_keygen() -> None:
    """git verifies SSH signatures with ssh-keygen (gpg.ssh.program)."""
    if shutil.which("ssh-keygen") is None:
        raise TrustError("--trust needs ssh-keygen to verify signatures and it is not on PATH; "
                         "install OpenSSH's client (e.g. apt-get install openssh-client)")


@dataclass(frozen=True)
class TrustPolicy:
    """What the agent accepts: `allowed_signers` None means signatures are not checked."""

    allowed_signers: Path | None = None
    allow_rewrite: bool = False

    @classmethod
    def load(cls, trust: Path | None, *, allow_rewrite: bool = False) -> TrustPolicy:
        """Checked at start: a bad --trust file stops the agent before it applies anything."""
        if trust is None:
            return cls(None, allow_rewrite)
        require_ssh_keygen()
        check_allowed_signers(trust)
        return cls(trust.resolve(), allow_rewrite)  # git runs in the mirror, not here


# --- the agent's own signing key (the revert a rollback trigger pushes) ----------------------


def public_key(private: Path) -> tuple[str, str]:
    """(key type, base64 key) of an unencrypted SSH private key, as `ssh-keygen -y` derives
    it; TrustError when it is not one (git signs with it unattended, so no passphrase)."""
    require_ssh_keygen()
    proc = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(private)], check=False,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) < 2:
        said = proc.stderr.strip().splitlines()[-1:] or ["no public key"]
        raise TrustError(f"--signing-key {private}: not an unencrypted SSH private key "
                         f"(ssh-keygen -y: {said[0]}); the agent signs unattended: give it its "
                         "own key without a passphrase (ssh-keygen -t ed25519 -N '')")
    return fields[0], fields[1]


def listed_keys(allowed_signers: Path) -> set[tuple[str, str]]:
    """Every (key type, base64 key) an allowed_signers file lists."""
    lines = allowed_signers.read_text(encoding="utf-8").splitlines()
    return {key for line in lines if not line.strip().startswith("#")
            for key in _line_keys(line.strip())}


def check_signing_key(key: Path | None, policy: TrustPolicy, *, pushes: bool) -> None:
    """At start: an agent with --trust that may push a trigger's revert must sign it with a
    key --trust lists, or every such host, itself included, would refuse that revert."""
    signer = public_key(key) if key is not None else None
    trust = policy.allowed_signers
    if trust is None or not pushes:
        return
    if signer is None:
        raise TrustError(f"--trust {trust} with a trigger push credential (--push-url or "
                         "--push-token-file): the revert this agent pushes when a rollback "
                         "trigger fires would be unsigned and refused, here too; pass "
                         "--signing-key PATH (GGUFOPS_SIGNING_KEY), an SSH key listed there")
    if signer not in listed_keys(trust):
        raise TrustError(f"--signing-key {key}: its public key is not in --trust {trust}, so "
                         "the revert it signs would be refused; add the line "
                         f"'ggufops-agent namespaces=\"git\" {' '.join(signer)}' there")


# --- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """git's verdict on one commit's signature: `letter` is %G? (G good and trusted)."""

    letter: str
    key: str
    principal: str

    def describe(self) -> str:
        return f"signed by {self.principal} ({self.key})" if self.principal else \
            f"signed with {self.key or 'an unknown key'}"


def _refusal(commit: str, sig: Signature, trust: Path) -> UntrustedCommit:
    short = commit[:12]
    if sig.letter == "N":
        return UntrustedCommit(f"commit {short} is not signed; --trust {trust} accepts only "
                               "commits signed by a key it lists: sign it (git config "
                               "gpg.format ssh, user.signingKey, commit.gpgSign true) and "
                               "push a new commit", "unsigned")
    if sig.letter == "U":
        return UntrustedCommit(f"commit {short} is signed with key {sig.key}, which is not in "
                               f"{trust}; add the key there if it is trusted, or push a commit "
                               "signed by a listed key", "untrusted-key")
    if sig.letter == "B":
        return UntrustedCommit(f"commit {short} has a bad signature (the commit does not match "
                               "it: forged or tampered); find out who pushed it, then push a "
                               "properly signed commit", "bad-signature")
    return UntrustedCommit(f"commit {short}'s signature cannot be verified (git says "
                           f"{sig.letter}: e.g. a GPG signature, or an expired or revoked key); "
                           f"--trust {trust} accepts SSH signatures by keys it lists",
                           "unverifiable")


def check_signature(repo: Path, commit: str, trust: Path) -> Signature:
    """The commit's trusted signature; UntrustedCommit for anything else."""
    sig = Signature(*git.commit_signature(repo, commit, trust))
    if sig.letter != "G":
        raise _refusal(commit, sig, trust)
    return sig


def check_history(repo: Path, commit: str, applied: str | None, policy: TrustPolicy,
                  signature: Signature | None) -> None:
    """UntrustedCommit unless `commit` moves the branch forward from `applied` (or a
    rewrite is allowed: see the module's docstring)."""
    if applied is None or applied == commit or git.is_ancestor(repo, applied, commit):
        return
    where = f"commit {commit[:12]} does not descend from the applied commit {applied[:12]}"
    if policy.allow_rewrite:
        log.warning("%s (history rewritten); applying it: --allow-rewrite is on", where)
        return
    then, now = git.commit_time(repo, applied), git.commit_time(repo, commit)
    if signature is not None and then is not None and now is not None and now > then:
        log.warning("%s; applying it: %s and newer than the applied commit", where,
                    signature.describe())
        return
    raise UntrustedCommit(f"{where}: the branch's history was rewritten (force-push or "
                          f"reset); refused, the host keeps serving {applied[:12]}; "
                          f"{_rewrite_hint(policy)}", "history-rewritten")


def _rewrite_hint(policy: TrustPolicy) -> str:
    if policy.allowed_signers is None:
        return ("if the rewrite is intended, restart the agent once with --allow-rewrite "
                "(GGUFOPS_ALLOW_REWRITE=1), or push the change as a new commit on top")
    return ("it is signed but not newer than the applied commit (an older state pushed "
            "again?); push a new signed commit, or restart the agent once with --allow-rewrite")


def verify(repo: Path, commit: str, applied: str | None, policy: TrustPolicy) -> Signature | None:
    """Everything --trust and the history rule require of `commit` (fetched into `repo`);
    the trusted signature (None without --trust), or UntrustedCommit."""
    signature = None
    if policy.allowed_signers is not None:
        signature = check_signature(repo, commit, policy.allowed_signers)
    check_history(repo, commit, applied, policy, signature)
    return signature
