"""``txwatch evaluate``: ROC-AUC, AP, CP@100 and recall per scenario of a replay's scores."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime

# (txwatch.evaluation, with numpy, is imported when the command runs: building the parser
# for ``txwatch --help`` stays cheap)


def _date(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).date()
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (expected YYYY-MM-DD)") from e


def _rate(text: str) -> float:
    try:
        r = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
    if not 0.0 <= r <= 1000.0:
        raise argparse.ArgumentTypeError("must be within [0, 1000]")
    return r


def _run(args: argparse.Namespace) -> int:
    if args.end < args.start:
        print(f"txwatch evaluate: --end {args.end} is before --start {args.start}",
              file=sys.stderr)
        return 2
    from txwatch.evaluation import EvalInputError, evaluate, format_report

    try:
        res = evaluate(args.input, args.scores, args.start, args.end, args.delay_days,
                       args.plots, args.ceilings, args.legit_rate)
    except (OSError, EvalInputError) as e:
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
        "and in the top 1%, the alert rate, the operating point (--legit-rate), and the same "
        "for each model component.",
    )
    p.add_argument("--input", required=True, help="the transactions file given to replay")
    p.add_argument("--scores", required=True, help="the scores file written by replay")
    p.add_argument("--start", type=_date, default=date(2018, 8, 8),
                   help="first day evaluated, YYYY-MM-DD (2018-08-08)")
    p.add_argument("--end", type=_date, default=date(2018, 8, 14),
                   help="last day evaluated, YYYY-MM-DD (2018-08-14)")
    p.add_argument("--delay-days", type=int, default=7,
                   help="days after which a fraud makes its card known (7)")
    p.add_argument("--plots", default=None, help="directory for the PR curve and histogram")
    p.add_argument("--ceilings", action="store_true",
                   help="also what orderings that know the ground truth reach (simulated "
                   "data of the handbook's design): the AP of a perfect label-free ordering, "
                   "of the amount over each customer's true mean, of the same knowing the "
                   "compromised cards, and of each transaction's probability of fraud given its "
                   "card's amounts under the simulator's own design (Bayes); and the spree's "
                   "recall at the operating point of the pace of its runs against each "
                   "customer's true rate, alone and when card testing and takeovers take "
                   "their share of the legitimate alerts at recall 0.8")
    p.add_argument("--legit-rate", type=_rate, default=1.0, metavar="R",
                   help="the operating point: recall per scenario of the score alone at the "
                   "threshold that alerts at most R of every 1,000 legitimate transactions, "
                   "chosen knowing the labels (it measures the ranking apart from the "
                   "decision's thresholds and budgets; default 1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_run)
