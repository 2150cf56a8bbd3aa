"""`llmdoctor db upgrade|downgrade|current --db URL`: the feedback database's schema revision.

The server refuses a database at an older revision and names `llmdoctor db upgrade --db URL`; this
is that command. Each action prints the revision before and after; a bad URL or revision is one
line naming the flag, exit 2. SQLAlchemy and Alembic load inside the run, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2
URL_HELP = "the feedback database: sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def add_db_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    texts = {
        "upgrade": "migrate the feedback tables up (a new database is created)",
        "downgrade": "migrate the feedback tables down (--revision base drops them, with their rows)",
        "current": "print the feedback tables' revision",
    }
    sub = {name: actions.add_parser(name, help=text, description=text) for name, text in texts.items()}
    for action in sub.values():
        action.add_argument("--db", required=True, metavar="URL", help=URL_HELP)
    sub["upgrade"].add_argument("--revision", default="head", metavar="REV", help="target revision (default head)")
    sub["downgrade"].add_argument("--revision", required=True, metavar="REV",
                                  help="target revision: an id, -1 (one step), or base (no tables)")


def run_db_command(args: argparse.Namespace) -> int:
    from llmdoctor.server.feedback import database

    try:
        if args.action == "current":
            print(describe(args.db, database.current_revision(args.db)))
            return 0
        step = database.upgrade if args.action == "upgrade" else database.downgrade
        before, after = step(args.db, args.revision)
    except database.FeedbackDatabaseError as exc:
        print(f"llmdoctor db {args.action}: --{exc.param or 'db'}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    change = f"already at {describe(args.db, after)}" if before == after else \
        f"{describe(args.db, before)} -> {describe(args.db, after)}"
    print(f"{database.mask_url(args.db)}: {change}")
    return 0


def describe(url: str, revision: str | None) -> str:
    """A revision with what it means here: "cb9494d405dd (head)", "base (no feedback tables)" ..."""
    from llmdoctor.server.feedback import database

    if revision is None:
        return "base (no feedback tables)"
    if revision == database.head_revision():
        return f"{revision} (head)"
    if revision in database.known_revisions():
        return f"{revision} (outdated: {database.upgrade_command(url)})"
    return f"{revision} (unknown to this llmdoctor: written by a newer release?)"
