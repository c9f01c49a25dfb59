"""``users``: local reviewer accounts for the app's log-in (add, list, remove)."""

from __future__ import annotations

import argparse
import getpass
import sys

from bcclassify.cli.common import EXIT_OK, SubParsers, UsageError

__all__ = ["add_users", "run_users"]


def add_users(sub: SubParsers) -> None:
    p = sub.add_parser(
        "users",
        help="local reviewer accounts for the app (add, list, remove)",
        description="Reviewer accounts for the app's log-in where no single sign-on provider is "
        "configured: salted Argon2id hashes in accounts.json in the data directory "
        "($BCCLASSIFY_DATA_DIR, default ~/.bcclassify) or at $BCCLASSIFY_ACCOUNTS.",
    )
    actions = p.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", help="create an account (the password is asked for)")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (one line)"
    )
    add.add_argument("--replace", action="store_true", help="set a new password for NAME")
    actions.add_parser("list", help="account names and when they were created")
    remove = actions.add_parser("remove", help="delete an account")
    remove.add_argument("name")


def run_users(args: argparse.Namespace) -> int:
    # argon2 (1 s): paid by users only, not by every command's --help.
    from bcclassify.access.accounts import (
        AccountError,
        accounts_path,
        add_user,
        list_users,
        remove_user,
        streamlit_secrets,
    )

    path = accounts_path(streamlit_secrets())
    try:
        if args.users_command == "list":
            for user in list_users(path):
                print(f"{user['name']}\t{user['created']}")
        elif args.users_command == "remove":
            remove_user(path, args.name)
            print(f"removed {args.name} from {path}", file=sys.stderr)
        else:
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = getpass.getpass(f"Password for {args.name}: ")
                if getpass.getpass("Repeat it: ") != password:
                    raise UsageError("the two passwords differ; nothing was changed")
            add_user(path, args.name, password, replace=args.replace)
            verb = "updated" if args.replace else "added"
            print(f"{verb} {args.name} in {path}", file=sys.stderr)
    except AccountError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK
