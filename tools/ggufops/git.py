"""Every git call ggufops makes lives here.

Reads of history go through as few processes as possible: a whole tree listing is one
`git ls-tree`, and any number of blobs come back from one `git cat-file --batch`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ggufops.errors import GitError
from ggufops.redact import redact

# Never let git prompt for credentials or an editor: ggufops runs unattended in CI and agents.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true", "GIT_ASKPASS": "true"}


# Lines git adds after the cause of a failed remote operation; they say nothing about it.
_BOILERPLATE = (
    "please make sure you have the correct access rights",
    "and the repository exists.",
    "fatal: could not read from remote repository.",
    "hint:",
)


def cause(stderr: bytes, returncode: int) -> str:
    """What went wrong, from git's stderr: its first line that is not boilerplate advice
    (git ends a failed fetch with "... and the repository exists.", which is no cause),
    without the "fatal: " prefix, credentials redacted."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    useful = [line for line in lines if line and not line.lower().startswith(_BOILERPLATE)]
    if not useful:
        useful = [line for line in lines if line]
    if not useful:
        return f"exit status {returncode}"
    first = useful[0]
    for prefix in ("fatal: ", "error: "):
        first = first.removeprefix(prefix)
    return redact(first)


def failure(message: str) -> GitError:
    """A GitError whose message shows no credentials (a URL may carry a token)."""
    return GitError(redact(message))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **_GIT_ENV}
    if extra:
        env.update(extra)
    return env


def run(
    args: Sequence[str],
    cwd: Path | None = None,
    *,
    check: bool = True,
    input_bytes: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `git ARGS` in `cwd`; raise GitError with git's own message on failure."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=input_bytes,
            capture_output=True,
            env=_env(env),
            check=False,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise GitError("git is not installed or not on PATH; install git") from None
    except subprocess.TimeoutExpired:
        raise failure(f"git {' '.join(args[:2])} timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        detail = cause(proc.stderr, proc.returncode)
        raise failure(f"git {' '.join(args[:3])} failed in {cwd or '.'}: {detail}")
    return proc


def out(args: Sequence[str], cwd: Path | None = None, **kwargs: object) -> str:
    return run(args, cwd, **kwargs).stdout.decode().strip()  # type: ignore[arg-type]


def toplevel(path: Path) -> Path | None:
    proc = run(["rev-parse", "--show-toplevel"], path, check=False)
    return Path(proc.stdout.decode().strip()) if proc.returncode == 0 else None


def is_ignored(cwd: Path, path: Path) -> bool:
    """True if git's ignore rules (any .gitignore, info/exclude, core.excludesFile) match
    `path`, whether or not it is tracked; False outside a git repository."""
    proc = run(["check-ignore", "-q", "--no-index", "--", str(path)], cwd, check=False)
    return proc.returncode == 0


def rev_parse(cwd: Path, ref: str) -> str:
    """The commit sha `ref` names; GitError naming the ref if it does not exist."""
    sha = resolve(cwd, ref)
    if sha is None:
        raise GitError(f"{ref!r} is not a commit in {cwd}; fetch it or name another --base")
    return sha


def ls_tree(cwd: Path, ref: str, paths: Iterable[str] = ()) -> dict[str, str]:
    """path -> blob sha for every file under `paths` at `ref` (one process)."""
    raw = run(["ls-tree", "-r", "-z", "--full-tree", ref, "--", *paths], cwd).stdout
    result: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        if not entry:
            continue
        meta, _, path = entry.partition(b"\t")
        _mode, kind, sha = meta.split()
        if kind == b"blob":
            result[path.decode()] = sha.decode()
    return result


def cat_objects(cwd: Path, specs: Sequence[str]) -> list[bytes | None]:
    """Contents of many objects (`<sha>` or `<rev>:<path>`) through one `git cat-file --batch`.

    The result is in the order of `specs`; None where the object does not exist.
    """
    if not specs:
        return []
    raw = run(["cat-file", "--batch"], cwd, input_bytes="".join(f"{s}\n" for s in specs).encode())
    data = raw.stdout
    result: list[bytes | None] = []
    pos = 0
    for _ in specs:
        header_end = data.index(b"\n", pos)
        header = data[pos:header_end].split()
        if len(header) != 3:  # "<spec> missing" or "<spec> ambiguous"
            result.append(None)
            pos = header_end + 1
            continue
        size = int(header[2])
        start = header_end + 1
        result.append(data[start : start + size])
        pos = start + size + 1
    return result


def cat_blobs(cwd: Path, shas: Iterable[str]) -> dict[str, bytes]:
    """sha -> content for many blobs (missing ones left out)."""
    wanted = list(dict.fromkeys(shas))
    return {s: c for s, c in zip(wanted, cat_objects(cwd, wanted), strict=True) if c is not None}


def file_history(cwd: Path, ref: str, path: str) -> list[tuple[str, bytes]]:
    """(commit, content) for every commit up to `ref` that changed `path`, newest first.

    One `git log` and one `git cat-file`, whatever the number of commits.
    """
    commits = out(["log", "--format=%H", ref, "--", path], cwd).split()
    contents = cat_objects(cwd, [f"{c}:{path}" for c in commits])
    return [(c, b) for c, b in zip(commits, contents, strict=True) if b is not None]


def read_tree_files(cwd: Path, ref: str, paths: Iterable[str] = ()) -> dict[str, bytes]:
    """path -> content for every file under `paths` at `ref`, in two processes total."""
    tree = ls_tree(cwd, ref, paths)
    blobs = cat_blobs(cwd, tree.values())
    return {path: blobs[sha] for path, sha in tree.items() if sha in blobs}


def show_file(cwd: Path, ref: str, path: str) -> bytes | None:
    proc = run(["show", f"{ref}:{path}"], cwd, check=False)
    return proc.stdout if proc.returncode == 0 else None


def changed_files(cwd: Path, base: str, head: str | None = None) -> list[tuple[str, str]]:
    """(status letter, path) for files that differ between `base` and `head` (or the work tree)."""
    args = ["diff", "--name-status", "-z", "--no-renames", base]
    if head:
        args.append(head)
    raw = run([*args, "--"], cwd).stdout.split(b"\0")
    pairs = [(raw[i].decode(), raw[i + 1].decode()) for i in range(0, len(raw) - 1, 2)]
    untracked = [] if head else untracked_files(cwd)
    return pairs + [("A", p) for p in untracked]


def untracked_files(cwd: Path) -> list[str]:
    raw = run(["ls-files", "--others", "--exclude-standard", "-z"], cwd).stdout
    return [p.decode() for p in raw.split(b"\0") if p]


def commits_adding(cwd: Path, ref: str, paths: Sequence[str]) -> dict[str, str]:
    """path -> short sha of the commit (reachable from `ref`) that added it, one log walk."""
    if not paths:
        return {}
    raw = out(
        ["log", "--diff-filter=A", "--format=@%h", "--name-only", "-z", ref, "--", *paths], cwd
    )
    result: dict[str, str] = {}
    commit = ""
    for token in raw.replace("\0", "\n").splitlines():
        if token.startswith("@"):
            commit = token[1:]
        elif token and token not in result:
            result[token] = commit
    return result


# --- models + gates: base refs for `gate` and `bench --record` ---------------------------


def default_branch(cwd: Path) -> str | None:
    """The default branch as a ref: origin/HEAD's target, origin/main|master, or main|master."""
    proc = run(["symbolic-ref", "-q", "refs/remotes/origin/HEAD"], cwd, check=False)
    target = proc.stdout.decode().strip()
    if proc.returncode == 0 and target:
        return target.removeprefix("refs/remotes/")
    for ref in ("origin/main", "origin/master", "main", "master"):
        if resolve(cwd, ref) is not None:
            return ref
    return None


def merge_base(cwd: Path, a: str, b: str) -> str | None:
    proc = run(["merge-base", a, b], cwd, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


# --- runtime: the sync agent watches a remote branch and reads it from a bare mirror -----


def ls_remote(url: str, branch: str, *, timeout: float = 20.0) -> str:
    """The commit `branch` points to on the remote `url`: one `git ls-remote`, no fetch."""
    ref = f"refs/heads/{branch}"
    proc = run(["ls-remote", url, ref], check=False, timeout=timeout)
    if proc.returncode != 0:
        raise failure(f"git remote {url} is unreachable: {cause(proc.stderr, proc.returncode)}")
    for line in proc.stdout.decode().splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    raise failure(f"git remote {url} has no branch {branch!r}; push it or pass --branch")


def mirror_fetch(mirror: Path, url: str, branch: str, *, timeout: float = 300.0) -> str:
    """Fetch `branch` of `url` into the bare repository `mirror` (made on first use).

    Returns the fetched commit. Only that branch is fetched; tags are not.
    """
    if not (mirror / "HEAD").is_file():
        mirror.mkdir(parents=True, exist_ok=True)
        run(["init", "--quiet", "--bare", str(mirror)])
    refspec = f"+refs/heads/{branch}:refs/heads/{branch}"
    # --no-write-fetch-head: FETCH_HEAD would record the URL, credentials and all
    run(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", url, refspec], mirror,
        timeout=timeout)
    return rev_parse(mirror, f"refs/heads/{branch}")


# --- gitops: refs, commits built without touching the work tree, pushes, log walks -------
#
# Deploy and rollback build their commit with plumbing (a temporary index, write-tree,
# commit-tree) on top of an exact base commit, then move a ref. The user's checkout,
# index and current branch are never switched, so an interrupted command leaves nothing
# half-done behind, and a break-glass rollback costs a handful of short git processes.

_MISSING_IDENTITY = ("tell me who you are", "unable to auto-detect", "empty ident")


# How a remote reports that its branch moved under a push: behind (non-fast-forward,
# fetch first), or a concurrent push that held the ref's lock or moved it first: git then
# says "[remote rejected] (failed to update ref)" and, on stderr, "cannot lock ref ...: is
# at X but expected Y" (or "... .lock: File exists").
_BEHIND = ("non-fast-forward", "fetch first", "stale info")
_LOST_RACE = ("failed to update ref", "cannot lock ref")


def _remote_moved(summary: str, stderr: bytes) -> bool:
    if any(s in summary for s in _BEHIND):
        return True
    return _LOST_RACE[0] in summary and _LOST_RACE[1].encode() in stderr


@dataclass(frozen=True)
class PushOutcome:
    """What the remote said about one pushed ref.

    `non_fast_forward`: the remote branch moved since it was read (someone else pushed
    first, or their push won a race for the ref): rebase and retry."""

    ok: bool
    non_fast_forward: bool
    detail: str


def current_branch(cwd: Path) -> str | None:
    """The checked-out branch's short name; None on a detached HEAD."""
    proc = run(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd, check=False)
    name = proc.stdout.decode().strip()
    return name if proc.returncode == 0 and name else None


def resolve(cwd: Path, ref: str) -> str | None:
    """The commit `ref` names, or None when it does not exist."""
    proc = run(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def remote_url(cwd: Path, remote: str) -> str | None:
    proc = run(["remote", "get-url", remote], cwd, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def fetch_branch(cwd: Path, remote: str, branch: str, timeout: float = 300) -> None:
    """Update refs/remotes/<remote>/<branch> from the remote (no tags, one ref)."""
    refspec = f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}"
    run(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote, refspec], cwd,
        timeout=timeout)


def ahead_behind(cwd: Path, local: str, upstream: str) -> tuple[int, int]:
    """(commits only in `local`, commits only in `upstream`)."""
    text = out(["rev-list", "--left-right", "--count", f"{local}...{upstream}"], cwd)
    ahead, behind = text.split()
    return int(ahead), int(behind)


def is_ancestor(cwd: Path, ancestor: str, descendant: str) -> bool:
    proc = run(["merge-base", "--is-ancestor", ancestor, descendant], cwd, check=False)
    return proc.returncode == 0


def dirty_paths(cwd: Path) -> list[str]:
    """Tracked files with uncommitted changes (staged or not)."""
    raw = run(["status", "--porcelain", "-z", "--untracked-files=no"], cwd).stdout
    paths: list[str] = []
    entries = iter(raw.split(b"\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        paths.append(entry[3:].decode(errors="replace"))
        if entry[:1] in (b"R", b"C"):  # a rename's source follows as its own entry
            next(entries, None)
    return paths


def commit_files(cwd: Path, parent: str, files: Mapping[str, bytes], message: str) -> str:
    """A new commit: `parent`'s tree with `files` (path -> content) replaced. Moves no ref."""
    with tempfile.TemporaryDirectory(prefix="ggufops-index-") as tmp:
        index_env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run(["read-tree", parent], cwd, env=index_env)
        for path, content in files.items():
            blob = run(["hash-object", "-w", "--stdin"], cwd, input_bytes=content)
            sha = blob.stdout.decode().strip()
            run(["update-index", "--add", "--cacheinfo", f"100644,{sha},{path}"], cwd,
                env=index_env)
        tree = out(["write-tree"], cwd, env=index_env)
    sign = ["-S"] if signing_enabled(cwd) else []  # commit-tree ignores commit.gpgSign
    proc = run(["commit-tree", tree, "-p", parent, *sign, "-F", "-"], cwd, check=False,
               input_bytes=message.encode())
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        if any(s in err.lower() for s in _MISSING_IDENTITY):
            raise GitError(f"git has no author identity in {cwd}; set it with `git config "
                           "user.name NAME` and `git config user.email EMAIL`")
        if sign:
            raise failure(f"signing the commit failed in {cwd} (commit.gpgSign is on): "
                          f"{cause(proc.stderr, proc.returncode)}; check user.signingKey and "
                          "gpg.format, or turn signing off with `git config commit.gpgSign "
                          "false`")
        raise failure(f"git commit-tree failed in {cwd}: {cause(proc.stderr, proc.returncode)}")
    return proc.stdout.decode().strip()


def create_branch(cwd: Path, branch: str, sha: str) -> bool:
    """Create refs/heads/<branch> at `sha`; False (and no change) if it already exists."""
    proc = run(["update-ref", f"refs/heads/{branch}", sha, ""], cwd, check=False)
    return proc.returncode == 0


def advance_branch(cwd: Path, branch: str, new: str, old: str | None) -> str | None:
    """Move `branch` from `old` to `new` (a descendant); None on success, else why not.

    A checked-out branch is fast-forwarded with `git merge --ff-only`, which also updates
    the index and work tree (and refuses to overwrite local changes).
    """
    if current_branch(cwd) == branch:
        proc = run(["merge", "--ff-only", "--quiet", new], cwd, check=False)
    else:
        proc = run(["update-ref", f"refs/heads/{branch}", new, old or ""], cwd, check=False)
    if proc.returncode == 0:
        return None
    return cause(proc.stderr, proc.returncode)


def push(cwd: Path, remote: str, sha: str, branch: str, timeout: float = 300) -> PushOutcome:
    """Push commit `sha` to refs/heads/<branch> on `remote` (never forced)."""
    proc = run(["push", "--porcelain", remote, f"{sha}:refs/heads/{branch}"], cwd,
               check=False, timeout=timeout)
    for line in proc.stdout.decode(errors="replace").splitlines():
        flag, _, rest = line.partition("\t")
        if flag in (" ", "*", "+", "=", "-", "!") and "\t" in rest:
            summary = rest.split("\t", 1)[1]
            non_ff = flag == "!" and _remote_moved(summary, proc.stderr)
            return PushOutcome(flag != "!", non_ff, redact(summary))
    return PushOutcome(proc.returncode == 0, False, cause(proc.stderr, proc.returncode))


def log_records(cwd: Path, args: Sequence[str]) -> list[list[str]]:
    """`git log ARGS` whose --format ends records with %x1e and separates fields with %x1f."""
    raw = run(["log", *args], cwd).stdout.decode(errors="replace")
    return [rec.lstrip("\n").split("\x1f") for rec in raw.split("\x1e") if rec.strip()]


def merge_file(ours: bytes, base: bytes, theirs: bytes) -> bytes | None:
    """Three-way merge of one file's contents (as `git merge-file`); None on a conflict."""
    with tempfile.TemporaryDirectory(prefix="ggufops-merge-") as tmp:
        names = []
        for name, content in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_bytes(content)
            names.append(str(path))
        proc = run(["merge-file", "-p", "--quiet", *names], Path(tmp), check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout


def is_shallow(cwd: Path) -> bool:
    return out(["rev-parse", "--is-shallow-repository"], cwd) == "true"


# --- trust: signed commits (gitops signs, the agent verifies) ----------------------------


def signing_enabled(cwd: Path) -> bool:
    """Is the user's git set up to sign commits here (commit.gpgSign)? `git commit` honours
    it, but `git commit-tree` (which deploy and rollback use) does not, so we ask."""
    proc = run(["config", "--bool", "--get", "commit.gpgsign"], cwd, check=False)
    return proc.stdout.decode().strip() == "true"


def commit_signature(cwd: Path, commit: str, allowed_signers: Path) -> tuple[str, str, str]:
    """(git's %G? letter, key fingerprint, principal) of `commit`'s signature, checked
    against an SSH allowed_signers file (the user's own gpg.ssh settings are overridden)."""
    args = ["-c", f"gpg.ssh.allowedSignersFile={allowed_signers}", "-c",
            "gpg.ssh.revocationFile=", "log", "-1", "--no-show-signature",
            "--format=%G?%x1f%GF%x1f%GS", commit, "--"]
    letter, _, rest = out(args, cwd).partition("\x1f")
    key, _, principal = rest.partition("\x1f")
    return letter or "N", key, principal


def commit_time(cwd: Path, commit: str) -> int | None:
    """The committer time of `commit` (part of what a signature covers); None if absent."""
    proc = run(["log", "-1", "--format=%ct", commit, "--"], cwd, check=False)
    text = proc.stdout.decode().strip()
    return int(text) if proc.returncode == 0 and text.isdigit() else None


def set_ref(cwd: Path, ref: str, sha: str) -> None:
    """Point `ref` (e.g. refs/ggufops/applied) at `sha`, keeping the commit from pruning."""
    run(["update-ref", ref, sha], cwd)
