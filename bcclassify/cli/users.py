"""``users``: local reviewer accounts for the app's log-in (add, list, remove)."""

from __future__ import annotations

import argparse
import getpass
import sys

from bcclassify.access.roles import Role
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
    add.add_argument(
        "--role",
        choices=[str(r) for r in Role],
        default=None,
        help="reviewer (default for a new account), pathologist (also signs off cases) or "
        "admin (also installs models, exports every decision, forgets kept cells)",
    )
    actions.add_parser("list", help="account names, roles and when they were created")
    role = actions.add_parser("role", help="give an account another role")
    role.add_argument("name")
    role.add_argument("role", choices=[str(r) for r in Role])
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
        set_role,
        streamlit_secrets,
    )

    path = accounts_path(streamlit_secrets())
    try:
        if args.users_command == "list":
            for user in list_users(path):
                print(f"{user['name']}\t{user['role']}\t{user['created']}")
        elif args.users_command == "role":
            set_role(path, args.name, Role(args.role))
            print(f"{args.name} is now {args.role} in {path}", file=sys.stderr)
        elif args.users_command == "remove":
            remove_user(path, args.name)
            print(f"removed {args.name} from {path}; its open sessions end", file=sys.stderr)
        else:
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = getpass.getpass(f"Password for {args.name}: ")
                if getpass.getpass("Repeat it: ") != password:
                    raise UsageError("the two passwords differ; nothing was changed")
            role_arg = Role(args.role) if args.role else None
            add_user(path, args.name, password, replace=args.replace, role=role_arg)
            done = "updated" if args.replace else "added"
            ended = "; its open sessions end" if args.replace else ""
            print(f"{done} {args.name} in {path}{ended}", file=sys.stderr)
    except AccountError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK
