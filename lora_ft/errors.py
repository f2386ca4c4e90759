"""User-facing errors.

Every error a user can fix (a bad config, bad data, a missing file, a wrong flag) is raised as a
:class:`UserError`. The CLI prints it on one screen and exits with :data:`EXIT_USAGE`; it never prints a
traceback for it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected failure: a bug, or the environment broke mid-run
EXIT_USAGE = 2  # bad config, data, files or flags: the message says what to change
EXIT_DIVERGED = 3  # training stopped on NaN or Inf gradients: the message says what to try
EXIT_CHECKPOINT_WRITE = 4  # a checkpoint could not be written (full disk): the previous one is intact
EXIT_SIGNAL_BASE = 128  # stopped by a signal after saving a checkpoint: 128 + its number (SIGTERM 143, SIGINT 130)


class Problem:
    """One thing that is wrong: what, where (file:line or key path) and how to fix it."""

    def __init__(self, what: str, where: str = "", fix: str = "") -> None:
        self.what = what
        self.where = where
        self.fix = fix

    def render(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head}\n  fix: {self.fix}" if self.fix else head

    def __repr__(self) -> str:
        return f"Problem({self.render()!r})"


class UserError(Exception):
    """An error the user can fix: a title and every problem found, reported together."""

    exit_code = EXIT_USAGE

    def __init__(self, title: str, problems: list[Problem] | None = None, *, where: str = "", fix: str = "",
                 settings: tuple[str, ...] = ()) -> None:
        super().__init__(title)
        self.title = title
        self.problems = list(problems or [])
        self.where = where
        self.fix = fix
        # the config keys the fix asks to change ("data.max_seq_length"): a command that cannot change them (eval
        # reads data with the run's settings) gives its own fix instead
        self.settings = tuple(settings)

    def render(self, max_problems: int = 15) -> str:
        head = f"error: {self.where}: {self.title}" if self.where else f"error: {self.title}"
        lines = [head]
        shown = self.problems[:max_problems]
        for problem in shown:
            lines.append("  - " + problem.render().replace("\n", "\n    "))
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class TrainingDiverged(UserError):
    """The loss or gradients became NaN or Inf; the run stopped before that step changed any weight."""

    exit_code = EXIT_DIVERGED


class CheckpointWriteFailed(UserError):
    """A checkpoint could not be written (a full disk); the previous complete checkpoint is intact."""

    exit_code = EXIT_CHECKPOINT_WRITE


class RunInterrupted(UserError):
    """Training stopped on SIGTERM or SIGINT after committing a checkpoint; the run resumes from it."""

    def __init__(self, title: str, signum: int, *, fix: str = "") -> None:
        super().__init__(title, fix=fix)
        self.exit_code = EXIT_SIGNAL_BASE + signum

    def render(self, max_problems: int = 15) -> str:
        return "stopped: " + super().render(max_problems).removeprefix("error: ")


class DiskFull(UserError):
    """A file could not be written because the disk (or the user's quota) is full."""

    exit_code = EXIT_CHECKPOINT_WRITE


def file_system_error(exc: OSError) -> UserError | None:
    """A clear message for a file-system fault a user can fix (a full disk, no permission, a missing folder), or
    None for one that is not theirs to fix."""
    import errno

    where = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"the disk is full: could not write {where} ({exc.strerror})",
                        fix="free some space (or choose another output location) and run the command again; "
                        "nothing finished was lost")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {where}: {exc.strerror}",
                         fix="choose a location you can write to, or fix the permissions")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return UserError(f"cannot write {where}: {exc.strerror}",
                         fix="check the path: its folder must exist, and a file name must not be a folder")
    return None
