"""``raftmq passwd FILE USER``: manage a password file the way ``mosquitto_passwd`` does.

    raftmq passwd -c FILE USER     create FILE (replacing it) with USER in it
    raftmq passwd FILE USER        add USER or change USER's password
    raftmq passwd -D FILE USER     delete USER

The password is asked twice on the terminal, or read as one line from
standard input with --password-stdin (for scripts; it never shows in ps the
way mosquitto_passwd's -b argument does). Other lines, comments included, are
kept as they are. The file is replaced atomically, so a node reloading it on
SIGHUP never reads half of it; a new file gets mode 0600, an existing one
keeps its mode.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from raftmq.node.files import write_atomically
from raftmq.node.passwords import hash_password, split_line

EXIT_FAILURE = 1
MAX_USERNAME_BYTES = 65535  # an MQTT UTF-8 string


class PasswdError(Exception):
    """A refusal, phrased for the user."""


def check_username(user: str) -> None:
    if not user:
        raise PasswdError("the user name is empty")
    if ":" in user:
        raise PasswdError(f"user name {user!r} contains ':', which separates user and hash")
    if user != user.strip() or user.startswith("#"):
        raise PasswdError(f"user name {user!r} starts with '#' or space, or ends with space")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise PasswdError(f"user name {user!r} contains control characters")
    if len(user.encode("utf-8")) > MAX_USERNAME_BYTES:
        raise PasswdError(f"user name is longer than {MAX_USERNAME_BYTES} bytes")


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PasswdError(f"{path} does not exist (use -c to create it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswdError(f"cannot read {path}: {exc}") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            split_line(line)
        except ValueError as exc:
            raise PasswdError(f"{path}:{number}: {exc}; fix or remove that line first") from None
    return lines


def _user_index(lines: list[str], user: str) -> int | None:
    for index, line in enumerate(lines):
        entry = split_line(line)
        if entry is not None and entry[0] == user:
            return index
    return None


def _write(path: Path, lines: list[str]) -> None:
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    write_atomically(path, "".join(line + "\n" for line in lines).encode("utf-8"), mode)


def _read_password(from_stdin: bool) -> bytes:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Reenter password: ") != password:
            raise PasswdError("the passwords do not match")
    if not password:
        raise PasswdError("the password is empty")
    return password.encode("utf-8")


def set_password(path: Path, user: str, password: bytes, *, create: bool = False) -> bool:
    """Add ``user`` or change their password; True if the user was new."""
    check_username(user)
    lines = [] if create else _read_lines(path)
    entry = f"{user}:{hash_password(password)}"
    index = _user_index(lines, user)
    if index is None:
        lines.append(entry)
    else:
        lines[index] = entry
    _write(path, lines)
    return index is None


def delete_user(path: Path, user: str) -> None:
    lines = _read_lines(path)
    index = _user_index(lines, user)
    if index is None:
        raise PasswdError(f"user {user!r} is not in {path}")
    del lines[index]
    _write(path, lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``passwd`` on the given subparsers."""
    parser = subparsers.add_parser(
        "passwd",
        help="add, change or delete users of a password file",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "-c", dest="create", action="store_true", help="create FILE, replacing it if it exists"
    )
    action.add_argument("-D", dest="delete", action="store_true", help="delete USER from FILE")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of asking",
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="the password file")
    parser.add_argument("user", metavar="USER", help="the user name")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        if args.delete:
            delete_user(path, args.user)
            print(f"deleted user {args.user!r} from {path}")
        else:
            check_username(args.user)
            if not args.create:
                _read_lines(path)  # fail before asking for a password
            new = set_password(
                path, args.user, _read_password(args.password_stdin), create=args.create
            )
            print(f"{'added' if new else 'changed password of'} user {args.user!r} in {path}")
    except PasswdError as exc:
        print(f"raftmq passwd: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, EOFError) as exc:
        print(f"raftmq passwd: error: {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("running nodes read it again on SIGHUP")
    return 0
