"""Real SSH signing keys (ssh-keygen) and signed, foreign-signed and forged git commits."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testing.repos import git


@dataclass(frozen=True)
class SigningKey:
    """An ed25519 key pair made by ssh-keygen; `principal` is who it belongs to."""

    private: Path
    principal: str

    @property
    def public(self) -> str:
        kind, blob = Path(f"{self.private}.pub").read_text().split()[:2]
        return f"{kind} {blob}"

    def allowed_line(self) -> str:
        return f'{self.principal} namespaces="git" {self.public}'

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", f"{self.private}.pub"], capture_output=True,
                             text=True, check=True).stdout
        return out.split()[1]


def make_key(directory: Path, principal: str) -> SigningKey:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / principal.split("@", maxsplit=1)[0]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f",
                    str(path)], check=True, capture_output=True)
    return SigningKey(path, principal)


def allowed_signers(path: Path, *keys: SigningKey) -> Path:
    path.write_text("# who may change production\n" +
                    "".join(k.allowed_line() + "\n" for k in keys))
    return path


def sign_with(repo: Path, key: SigningKey | None) -> None:
    """Make every later `git commit` in `repo` signed by `key` (None: unsigned)."""
    if key is None:
        git(repo, "config", "commit.gpgsign", "false")
        return
    git(repo, "config", "gpg.format", "ssh")
    git(repo, "config", "user.signingkey", str(key.private))
    git(repo, "config", "commit.gpgsign", "true")


def signing_global_config(home: Path, key: SigningKey) -> Path:
    """A global git config (as in the user's ~/.gitconfig) that signs with `key`."""
    config = home / "signing.gitconfig"
    config.write_text("[init]\n\tdefaultBranch = main\n[protocol \"file\"]\n\tallow = always\n"
                      f"[gpg]\n\tformat = ssh\n[user]\n\tsigningkey = {key.private}\n"
                      "[commit]\n\tgpgsign = true\n")
    return config


def forge(repo: Path, signed: str, message: str, *, tree: str | None = None,
          parent: str | None = None) -> str:
    """A commit object carrying `signed`'s signature over other content (a new message, and
    `tree` and `parent` if given): what an attacker without the key can make. Written to
    `repo`'s objects; no ref moved."""
    raw = git(repo, "cat-file", "commit", signed) + "\n"
    lines = raw.partition("\n\n")[0].split("\n")
    for field, value in (("tree", tree), ("parent", parent)):
        if value is not None:
            lines = [f"{field} {value}" if line.startswith(f"{field} ") else line
                     for line in lines]
    header = "\n".join(lines)
    forged = f"{header}\n\n{message}\n"
    assert forged != raw and "gpgsig" in header
    proc = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], cwd=repo,
                          input=forged.encode(), capture_output=True, check=True,
                          env=os.environ.copy())
    return proc.stdout.decode().strip()


def signature(repo: Path, commit: str, allowed: Path) -> tuple[str, str]:
    """(%G?, principal) as git reports them with `allowed` as the allowed signers."""
    out = git(repo, "-c", f"gpg.ssh.allowedSignersFile={allowed}", "log", "-1",
              "--format=%G?|%GS", commit)
    letter, _, principal = out.partition("|")
    return letter, principal
