"""``txwatch evaluate``: ROC-AUC, AP, CP@100 and recall per scenario of a replay's scores."""

from __future__ import annotations

import argparse
import json
import sys

from txwatch.evaluation import evaluate, format_report, parse_date


def _run(args: argparse.Namespace) -> int:
    try:
        res = evaluate(args.input, args.scores, parse_date(args.start), parse_date(args.end),
                       args.delay_days, args.plots, args.ceilings)
    except FileNotFoundError as e:
        print(f"txwatch evaluate: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_report(res))
        if res.get("plots"):
            print("plots: " + ", ".join(res["plots"]))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate", help="measure a replay's scores against the ground truth",
        description="Join a replay's scores with the transactions' ground truth and print "
        "ROC-AUC, Average Precision, Card Precision@100 (the handbook's protocol: test week, "
        "known-compromised cards removed), recall per fraud scenario at the alert decision "
        "and in the top 1%, the alert rate, and the same for each model component.",
    )
    p.add_argument("--input", required=True, help="the transactions file given to replay")
    p.add_argument("--scores", required=True, help="the scores file written by replay")
    p.add_argument("--start", default="2018-08-08", help="first day evaluated (2018-08-08)")
    p.add_argument("--end", default="2018-08-14", help="last day evaluated (2018-08-14)")
    p.add_argument("--delay-days", type=int, default=7,
                   help="days after which a fraud makes its card known (7)")
    p.add_argument("--plots", default=None, help="directory for the PR curve and histogram")
    p.add_argument("--ceilings", action="store_true",
                   help="also the AP of orderings that know the ground truth (simulated data "
                   "of the handbook's design): a perfect label-free ordering, the amount over "
                   "each customer's true mean, and the same knowing the compromised cards")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_run)
