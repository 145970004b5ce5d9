"""`ivr calls`: recent outbound calls and their outcome, from the call records (IVR_OUTBOUND_DIR)."""

from __future__ import annotations

import argparse
import json
import os
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calls", help="list recent outbound calls and their outcome")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (newest first; default 20)")
    p.add_argument("--campaign", help="only this campaign's calls")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--show-numbers", action="store_true", help="print numbers in full (masked by default)")
    p.add_argument("--store", default=os.environ.get("IVR_OUTBOUND_DIR", ""), help="call records directory [IVR_OUTBOUND_DIR]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ivr.logs import mask_number
    from ivr.outbound.store import CallStore

    views = [v for v in CallStore(args.store or None).calls() if not args.campaign or v.campaign == args.campaign]
    views = list(reversed(views))[: max(args.limit, 0)]
    show = (lambda n: n) if args.show_numbers else mask_number
    if args.json:
        for v in views:
            print(json.dumps({"id": v.id, "sid": v.sid, "to": show(v.to), "status": v.status, "outcome": v.outcome,
                              "answered_by": v.answered_by, "duration_s": v.duration_s, "campaign": v.campaign,
                              "placed_at": v.placed_at, "error": v.error}))
        return 0
    if not views:
        print("no outbound calls yet")
        return 0
    print(f"{'placed':<19}  {'to':<16}  {'outcome':<16}  {'secs':>5}  {'campaign':<12}  sid")
    for v in views:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.placed_at or v.updated_at))
        secs = "" if v.duration_s is None else str(v.duration_s)
        print(f"{when:<19}  {show(v.to):<16}  {v.outcome:<16}  {secs:>5}  {v.campaign[:12]:<12}  {v.sid or v.error}")
    return 0
